"""The storage tiers: L1 (in-process LRU), L2 (Redis), L3 (Postgres JSONB), DRAM (pgvector)."""
