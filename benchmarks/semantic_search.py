"""Search latency of the semantic tier over 10,000 entries: `python -m benchmarks.semantic_search`.

Fills one namespace of a `DRAMTier` with `--entries` entries (default 10,000), then runs
`--queries` top-10 searches and reports p50/p95/p99 of, interleaved query by query:

- `search, cold query cache`: `DRAMTier.search(question, limit=10)` on a tier that caches no
  query (`query_cache_size=0`): the query's embedding, its lexemes (one round trip), the term
  statistics (cached per word for 10 s) and the search statement;
- `search, warm query cache`: the same on a tier that has seen every query once (embedding and
  lexemes from its cache: the statement alone, plus statistics older than 10 s);
- `search, vector given`: the embedder answers from a table, the lexemes are not cached: the
  tier's own SQL cost on a first query;
- with `--home`, `search through a hierarchy's home index`: the same entries stored in an L3
  home and indexed by `reindex_home`, searched by a DRAMTier attached to that home (each hit
  checked against its L3 row), with a warm query cache and with a cold one (query embedded);
- `embed one query` (the embedder alone) and the lexeme round trip alone;
- the baseline: asyncpg's prepared `ORDER BY embedding <=> $1 LIMIT 10` on the same table and
  HNSW index (no text ranking, no fusion, no value decoding), with the ratio of each search to it.

With `--data` (a LoCoMo release) the entries are LoCoMo's turns (with the previous turn as
context, as `sagemem eval locomo` stores them), observations and session summaries, topped up
to `--entries` with turns stored a second time under other keys, and the queries are LoCoMo's
questions; without it both are synthetic sentences from a fixed Zipf-distributed vocabulary.
Entries are embedded in batches beforehand, so filling takes a minute rather than one model
call per write. The namespace lives in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

import asyncpg

from sagemem.embedding import Embedder, HashingEmbedder
from sagemem.evaluation.locomo import (
    EMBEDDERS,
    EvaluationOptions,
    build_embedder,
    conversation_entries,
    drop_schema,
    entry_text,
    load_conversations,
)
from sagemem.tiers.dram import SEARCH_MODES, DRAMTier, SearchMode
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue, encode_value


class PrecomputedEmbedder:
    """Answers from a table of vectors computed beforehand; other texts go to `fallback`."""

    def __init__(self, fallback: Embedder, table: dict[str, list[float]]) -> None:
        self.fallback = fallback
        self.table = table

    def __repr__(self) -> str:
        return f"PrecomputedEmbedder({self.fallback!r}, {len(self.table)} texts)"

    @property
    def dimensions(self) -> int:
        """The fallback's dimensions."""
        return self.fallback.dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors from the table, or from the fallback for texts not in it."""
        missing = [text for text in texts if text not in self.table]
        if missing:
            for text, vector in zip(missing, await self.fallback.embed(missing), strict=True):
                self.table[text] = vector
        return [self.table[text] for text in texts]


def _synthetic(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu"]
    vocabulary = sorted(
        {"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(6000)}
    )
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    return [" ".join(rng.choices(vocabulary, weights, k=rng.randint(8, 30))) for _ in range(count)]


def corpus(
    data: Path | None, entries: int, queries: int, seed: int
) -> tuple[list[tuple[str, JSONValue]], list[str]]:
    """(key, value) pairs to store and query texts."""
    if data is None:
        texts = _synthetic(entries + queries, seed)
        stored: list[tuple[str, JSONValue]] = [
            (f"doc:{index}", text) for index, text in enumerate(texts[:entries])
        ]
        return stored, texts[entries:]
    conversations = load_conversations(data)
    options = EvaluationOptions(observations=True, summaries=True)
    stored = []
    for index, conversation in enumerate(conversations):
        stored += [
            (f"{index}:{key}", value) for key, value in conversation_entries(conversation, options)
        ]
    turns = [(key, value) for key, value in stored if ":turn:" in key]
    copy = 0
    while len(stored) < entries:
        key, value = turns[copy % len(turns)]
        stored.append((f"{key}:copy{copy // len(turns)}", value))
        copy += 1
    questions = [q.text for c in conversations for q in c.questions]
    random.Random(seed).shuffle(questions)
    return stored[:entries], questions[:queries]


def _summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 3)

    return {"p50": round(statistics.median(ordered), 3), "p95": at(0.95), "p99": at(0.99)}


async def _fill_home(
    dsn: str | None, schema: str, stored: list[tuple[str, JSONValue]], embedder: Embedder
) -> float:
    """Store `stored` in an L3 home (one multi-row insert per 1,000) and index it with
    `reindex_home`, as a hierarchy's semantic tier would hold it; return the seconds taken."""
    started = time.perf_counter()
    async with L3Tier(dsn, namespace="bench", schema=schema) as home:
        rows = [(key, encode_value(value)) for key, value in stored]
        async with home._connected().lease() as connection:
            for start in range(0, len(rows), 1000):
                await connection.executemany(
                    f"INSERT INTO {home.table} (namespace, key, value, version, deleted) "
                    "VALUES ('bench', $1, $2::text::jsonb, 1, false)",
                    rows[start : start + 1000],
                )
        index = DRAMTier(
            dsn, namespace="bench", schema=schema, embedder=embedder, text_of=entry_text
        )
        index.attach_home(home)
        async with index:
            while await index.reindex_home(limit=1000):
                print("indexing the home", file=sys.stderr, flush=True)
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Fill, warm up, measure; return the summaries."""
    embedder: Embedder = HashingEmbedder() if args.embedder == "hashing" else build_embedder(args)
    stored, queries = corpus(args.data, args.entries, args.queries, args.seed)
    print(f"{len(stored)} entries, {len(queries)} queries, {embedder!r}", file=sys.stderr)
    texts = sorted({entry_text(value) for _, value in stored})
    table: dict[str, list[float]] = {}
    if args.embedding_cache is not None and args.embedding_cache.exists():
        table = json.loads(args.embedding_cache.read_text(encoding="utf-8"))
    started = time.perf_counter()
    missing = [text for text in texts if text not in table]
    for start in range(0, len(missing), 256):
        batch = missing[start : start + 256]
        table.update(zip(batch, await embedder.embed(batch), strict=True))
        print(f"embedded {start + len(batch)}/{len(missing)}", file=sys.stderr, flush=True)
    embed_s = time.perf_counter() - started
    if args.embedding_cache is not None and missing:
        args.embedding_cache.write_text(json.dumps(table), encoding="utf-8")
    schema = args.keep_schema or f"search_bench_{uuid.uuid4().hex[:10]}"
    home_schema = f"{schema}_home"
    filled = args.keep_schema is not None and await _filled(
        args.dsn, [schema, home_schema] if args.home else [schema], len(stored)
    )
    precomputed = PrecomputedEmbedder(embedder, table)
    mode: SearchMode = args.mode
    samples: dict[str, list[float]] = {name: [] for name in _OPERATIONS}
    home_fill_s = 0.0
    try:
        async with DRAMTier(
            args.dsn,
            namespace="bench",
            schema=schema,
            embedder=precomputed,
            text_of=entry_text,
        ) as filling:
            started = time.perf_counter()
            for index, (key, value) in enumerate([] if filled else stored):
                await filling.set(key, value)
                if (index + 1) % 1000 == 0:
                    print(f"stored {index + 1}/{len(stored)}", file=sys.stderr, flush=True)
            fill_s = time.perf_counter() - started
            if args.home and not filled:
                home_fill_s = await _fill_home(args.dsn, home_schema, stored, precomputed)
                print(f"home indexed in {home_fill_s:.1f} s", file=sys.stderr, flush=True)
            await precomputed.embed(queries)  # the query vectors of the "vector given" runs
            # Table statistics as autovacuum keeps them in steady state (a table filled a few
            # seconds ago has none yet, and the planner then picks plans 5-10x slower).
            await _analyze(args.dsn, [schema, home_schema] if args.home else [schema])
            async with contextlib.AsyncExitStack() as stack:
                cold = await stack.enter_async_context(
                    DRAMTier(
                        args.dsn,
                        namespace="bench",
                        schema=schema,
                        embedder=embedder,
                        text_of=entry_text,
                        query_cache_size=0,
                    )
                )
                warm = await stack.enter_async_context(
                    DRAMTier(
                        args.dsn,
                        namespace="bench",
                        schema=schema,
                        embedder=embedder,
                        text_of=entry_text,
                        query_cache_size=len(queries),
                    )
                )
                bound = bound_cold = None
                if args.home:
                    home = await stack.enter_async_context(
                        L3Tier(args.dsn, namespace="bench", schema=home_schema)
                    )
                    bound = DRAMTier(
                        args.dsn,
                        namespace="bench",
                        schema=home_schema,
                        embedder=precomputed,
                        text_of=entry_text,
                    )
                    bound.attach_home(home)
                    await stack.enter_async_context(bound)
                    bound_cold = DRAMTier(
                        args.dsn,
                        namespace="bench",
                        schema=home_schema,
                        embedder=embedder,
                        text_of=entry_text,
                        query_cache_size=0,
                    )
                    bound_cold.attach_home(home)
                    await stack.enter_async_context(bound_cold)
                baseline = await stack.enter_async_context(_RawVectorSearch(args.dsn, schema))
                # Warm-up: plans, caches, the warm tier's query cache (every query once).
                for query in queries[:50]:
                    await cold.search(query, limit=10, mode=mode)
                    await baseline.top10(table[query])
                    if bound is not None and bound_cold is not None:
                        await bound.search(query, limit=10, mode=mode)
                        await bound_cold.search(query, limit=10, mode=mode)
                for query in queries:
                    await warm.search(query, limit=10, mode=mode)
                    if bound is not None and bound_cold is not None:
                        await bound.search(query, limit=10, mode=mode)
                        await bound_cold.search(query, limit=10, mode=mode)
                for query in queries:
                    vector = table[query]
                    timed: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                        ("cold", partial(cold.search, query, limit=10, mode=mode)),
                        ("warm", partial(warm.search, query, limit=10, mode=mode)),
                        ("given", partial(filling.search, query, limit=10, mode=mode)),
                        ("embed", partial(embedder.embed, [query])),
                        ("lexemes", partial(_lexemes, filling, query)),
                        ("raw_vector", partial(baseline.top10, vector)),
                    ]
                    if bound is not None and bound_cold is not None:
                        timed.append(("home", partial(bound.search, query, limit=10, mode=mode)))
                        timed.append(
                            ("home_cold", partial(bound_cold.search, query, limit=10, mode=mode))
                        )
                    for name, call in timed:
                        started = time.perf_counter()
                        await call()
                        samples[name].append((time.perf_counter() - started) * 1000)
            if args.writes and args.home:
                # In the home's schema, beside its 10,000 indexed entries (the HNSW index's
                # size is part of a write's cost), in namespaces of their own.
                written = [value for _, value in stored[: args.writes]]
                await _write_costs(args.dsn, home_schema, embedder, written, samples)
    finally:
        if args.keep_schema is None:
            await drop_schema(args.dsn, schema)
            if args.home:
                await drop_schema(args.dsn, home_schema)
    result: dict[str, object] = {
        "entries": len(stored),
        "queries": len(queries),
        "embedder": repr(embedder),
        "mode": mode,
        "corpus": "LoCoMo" if args.data else "synthetic",
        "embed_entries_s": round(embed_s, 1),
        "fill_s": round(fill_s, 1),
        "home_fill_s": round(home_fill_s, 1),
    }
    for name, values in samples.items():
        if values:
            result[f"{name}_ms"] = _summary(values)
    return result


async def _write_costs(
    dsn: str | None,
    schema: str,
    embedder: Embedder,
    values: list[JSONValue],
    samples: dict[str, list[float]],
) -> None:
    """Time `set` through hierarchies without and with the semantic tier, write by write.

    Each hierarchy has a namespace of its own; each pair writes the same values to the same
    keys (50 keys, so most writes replace a value), one after the other: a plain hierarchy at
    the home (`tier_index=2`, the L3 commit), and a coherent agent at tier 0 (ownership; its
    later writes of a key it owns stay in its L1) and at tier 2 (a write-through). With the
    semantic tier each write also embeds the value and writes its index row.
    """
    from sagemem.coherence.bus import CoherenceBus
    from sagemem.hierarchy import MemoryHierarchy
    from sagemem.tiers.base import Tier
    from sagemem.tiers.l1 import L1Tier
    from sagemem.tiers.l1_coherent import CoherentL1Tier
    from sagemem.tiers.l2 import L2Tier

    run = uuid.uuid4().hex[:8]

    async def open_hierarchy(
        stack: contextlib.AsyncExitStack, kind: str, tier_index: int, semantic: bool
    ) -> MemoryHierarchy:
        namespace = f"writes-{run}-{kind}-{tier_index}-{'with' if semantic else 'without'}"
        first: Tier
        if kind == "plain":
            first = L1Tier()
        else:
            bus = CoherenceBus(namespace=namespace)
            await bus.connect()
            stack.push_async_callback(bus.aclose)
            first = CoherentL1Tier("bench", bus)
        tiers: list[Tier] = [
            first,
            L2Tier(namespace=namespace),
            L3Tier(dsn, namespace=namespace, schema=schema),
        ]
        if semantic:
            tiers.append(
                DRAMTier(
                    dsn, namespace=namespace, schema=schema, embedder=embedder, text_of=entry_text
                )
            )
        hierarchy = MemoryHierarchy(tiers, owns_tiers=True)
        return await stack.enter_async_context(hierarchy)

    kinds = {
        ("plain", 2): "write_plain_l3",
        ("coherent", 0): "write_coherent_0",
        ("coherent", 2): "write_coherent_2",
    }
    async with contextlib.AsyncExitStack() as stack:
        hierarchies = {
            (kind, tier_index, semantic): await open_hierarchy(stack, kind, tier_index, semantic)
            for kind, tier_index in kinds
            for semantic in (False, True)
        }
        for index, value in enumerate(values):
            key = f"fact:{index % 50}"
            for (kind, tier_index), name in kinds.items():
                for semantic in (False, True):
                    hierarchy = hierarchies[kind, tier_index, semantic]
                    started = time.perf_counter()
                    await hierarchy.set(key, value, tier_index=tier_index)
                    elapsed = (time.perf_counter() - started) * 1000
                    if index >= 10:  # the first writes warm connections and plans up
                        label = f"{name}_{'with' if semantic else 'without'}"
                        samples.setdefault(label, []).append(elapsed)


async def _filled(dsn: str | None, schemas: list[str], entries: int) -> bool:
    """Whether each schema's tables already hold `entries` rows of the benchmark namespace."""
    from sagemem.services import resolve_postgres_dsn

    resolved = dsn or await asyncio.to_thread(resolve_postgres_dsn, None)
    connection = await asyncpg.connect(resolved, timeout=30)
    try:
        for schema in schemas:
            if not await connection.fetchval("SELECT to_regclass($1)", f'"{schema}".dram_entries'):
                return False
            count = await connection.fetchval(
                f"SELECT count(*) FROM \"{schema}\".dram_entries WHERE namespace = 'bench' "
                "AND embedding IS NOT NULL"
            )
            if count != entries:
                return False
        return True
    finally:
        await connection.close(timeout=30)


async def _analyze(dsn: str | None, schemas: list[str]) -> None:
    from sagemem.services import resolve_postgres_dsn

    resolved = dsn or await asyncio.to_thread(resolve_postgres_dsn, None)
    connection = await asyncpg.connect(resolved, timeout=30)
    try:
        for schema in schemas:
            for table in ("dram_entries", "l3_entries"):
                if await connection.fetchval("SELECT to_regclass($1)", f'"{schema}".{table}'):
                    await connection.execute(f'ANALYZE "{schema}".{table}')
    finally:
        await connection.close(timeout=30)


async def _lexemes(tier: DRAMTier, query: str) -> object:
    """The round trip that turns the query into lexemes (part of every text or hybrid search)."""
    async with tier._connected().lease() as connection:
        return await connection.fetchval(tier._sql_lexemes, query)


class _RawVectorSearch:
    """Baseline: asyncpg's prepared top-10 pgvector query on the same table and HNSW index,
    no text ranking, no fusion, no decoding of values."""

    def __init__(self, dsn: str | None, schema: str) -> None:
        self._dsn = dsn
        self._schema = schema
        self._connection: asyncpg.Connection | None = None
        self._statement: asyncpg.prepared_stmt.PreparedStatement | None = None

    async def __aenter__(self) -> _RawVectorSearch:
        from pgvector.asyncpg import register_vector

        from sagemem.services import resolve_postgres_dsn

        dsn = self._dsn or await asyncio.to_thread(resolve_postgres_dsn, None)
        connection = await asyncpg.connect(dsn, timeout=30)
        self._connection = connection
        await connection.execute("SET hnsw.iterative_scan = strict_order")
        schema = await connection.fetchval(
            "SELECT n.nspname FROM pg_extension AS e JOIN pg_namespace AS n "
            "ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
        )
        await register_vector(connection, schema=schema)
        self._statement = await connection.prepare(
            f'SELECT key, value::text FROM "{self._schema}".dram_entries WHERE namespace = '
            f"'bench' AND NOT deleted ORDER BY embedding OPERATOR(\"{schema}\".<=>) $1 LIMIT 10"
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close(timeout=30)

    async def top10(self, vector: list[float]) -> object:
        """The ten nearest keys and their values."""
        assert self._statement is not None
        return await self._statement.fetch(vector)


_OPERATIONS = {
    "cold": "search, cold query cache (query embedded)",
    "warm": "search, warm query cache",
    "given": "search, vector given (the tier's SQL: lexemes, statistics, the statement)",
    "home": "search through a hierarchy's home index (warm query cache; joins the L3 row)",
    "home_cold": "search through a hierarchy's home index, cold query cache (query embedded)",
    "embed": "embed one query",
    "lexemes": "  of which: the query's lexemes (one round trip)",
    "raw_vector": "baseline: asyncpg prepared pgvector top-10, same table",
}
_WRITES = {
    "write_plain_l3": "write, plain hierarchy at L3 (tier_index=2)",
    "write_coherent_0": "write, coherent agent at tier 0",
    "write_coherent_2": "write, coherent agent at tier 2 (write-through)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a LoCoMo release (else synthetic text)")
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--embedder", choices=EMBEDDERS, default="minilm")
    parser.add_argument("--embedding-model")
    parser.add_argument("--embedding-dimensions", type=int)
    parser.add_argument("--mode", choices=SEARCH_MODES, default="hybrid")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--dsn")
    parser.add_argument(
        "--embedding-cache",
        type=Path,
        help="a JSON file of the entries' vectors: read if it exists, written after embedding "
        "(the same embedder must be named; it saves minutes per run with MiniLM)",
    )
    parser.add_argument(
        "--home",
        action="store_true",
        help="also measure a hierarchy's search (index rows joined with an L3 home)",
    )
    parser.add_argument(
        "--keep-schema",
        metavar="NAME",
        help="store the entries in schema NAME (and NAME_home) and keep them: a later run with "
        "the same NAME and entries measures at once instead of filling again",
    )
    parser.add_argument(
        "--writes",
        type=int,
        default=0,
        help="with --home, also time this many writes through hierarchies without and with "
        "the semantic tier (plain at L3, coherent at tier 0 and tier 2)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(
        f"{result['entries']} entries ({result['corpus']}), {result['queries']} top-10 "
        f"{result['mode']} searches, {result['embedder']}\n\n"
        "| operation | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|"
    )
    for name, label in _OPERATIONS.items():
        row = result.get(f"{name}_ms")
        if isinstance(row, dict):
            print(f"| {label} | {row['p50']:.2f} | {row['p95']:.2f} | {row['p99']:.2f} |")
    baseline = result.get("raw_vector_ms")
    if isinstance(baseline, dict):
        for name in ("cold", "warm", "given", "home", "home_cold"):
            row = result.get(f"{name}_ms")
            if isinstance(row, dict):
                print(f"{name} / baseline at the median: {row['p50'] / baseline['p50']:.2f}x")
    if any(f"{name}_without_ms" in result for name in _WRITES):
        print(
            "\n| write through a hierarchy | without the semantic tier p50 / p95 ms | with it "
            "p50 / p95 ms | with / without (p50) |\n|---|---:|---:|---:|"
        )
    for name, label in _WRITES.items():
        without, with_ = result.get(f"{name}_without_ms"), result.get(f"{name}_with_ms")
        if isinstance(without, dict) and isinstance(with_, dict):
            print(
                f"| {label} | {without['p50']:.2f} / {without['p95']:.2f} | "
                f"{with_['p50']:.2f} / {with_['p95']:.2f} | {with_['p50'] / without['p50']:.2f}x |"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
