"""The coherence home owns its columns of the L3 table: L3Tier creates none of them, the home
adds them where missing, and a table made by the older DDL (L3 creating them) keeps working."""

from __future__ import annotations

import asyncpg

from sagemem.coherence.home import HOME_COLUMNS, HomeStore, owner_token
from sagemem.spec.vocabulary import Guard
from sagemem.tiers.l3 import L3Tier

_BASE_COLUMNS = {"namespace", "key", "value", "version", "deleted", "updated_at"}


async def _columns(dsn: str, schema: str) -> set[str]:
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        rows = await connection.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'l3_entries'",
            schema,
        )
        return {str(row[0]) for row in rows}
    finally:
        await connection.close()


async def _outbox_index(dsn: str, schema: str) -> bool:
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        found = await connection.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f'"{schema}".l3_entries_outbox'
        )
        return bool(found)
    finally:
        await connection.close()


async def test_l3_creates_no_protocol_column_and_the_home_adds_them(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """A fresh L3 table has only L3's columns; the home's first statement adds its own."""
    async with L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema) as l3:
        assert await _columns(postgres_dsn, pg_schema) == _BASE_COLUMNS
        await l3.write("plain", 1)
        store = HomeStore(l3)
        read = await store.read("plain")
        assert (read.version, read.value) == (1, 1)
        assert await _columns(postgres_dsn, pg_schema) == _BASE_COLUMNS | set(HOME_COLUMNS)
        assert await _outbox_index(postgres_dsn, pg_schema)
        answer = await store.commit("plain", 2, owner_token("agent-a", "i1"), "op-1")
        assert (answer.branch, answer.version) == (Guard.NOT_OWNED_BY_OTHER, 2)
        assert await l3.read("plain") is not None
        assert await store.live_keys() == ["plain"]


async def test_a_table_made_by_the_older_ddl_keeps_its_rows_and_serves_both(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """A table L3 created with the protocol's columns (before the home owned them) keeps its
    rows; L3 and the home use it as it is, and ensuring the home's schema changes nothing."""
    table = f'"{pg_schema}".l3_entries'
    connection = await asyncpg.connect(postgres_dsn, timeout=30)
    try:
        await connection.execute(f'CREATE SCHEMA "{pg_schema}"')
        await connection.execute(
            f"CREATE TABLE {table} (namespace text NOT NULL, key text NOT NULL, value jsonb, "
            "version bigint NOT NULL CHECK (version >= 1), deleted boolean NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (namespace, key), "
            "CHECK (deleted = (value IS NULL)))"
        )
        await connection.execute(
            f"ALTER TABLE {table} ADD COLUMN owner text, ADD COLUMN owner_deadline timestamptz, "
            "ADD COLUMN outbox bigint, ADD COLUMN ops jsonb"
        )
        await connection.execute(
            f"CREATE INDEX l3_entries_outbox ON {table} (namespace) WHERE outbox IS NOT NULL"
        )
        await connection.execute(
            f"INSERT INTO {table} (namespace, key, value, version, deleted) "
            "VALUES ($1, 'old', '\"kept\"'::jsonb, 3, false)",
            namespace,
        )
    finally:
        await connection.close()
    before = await _columns(postgres_dsn, pg_schema)
    async with L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema) as l3:
        entry = await l3.read("old")
        assert entry is not None
        assert (entry.value, entry.version) == ("kept", 3)
        store = HomeStore(l3)
        await store.ensure_schema()
        answer = await store.commit("old", "new", owner_token("agent-a", "i1"), "op-1")
        assert answer.version == 4
        assert await store.live_keys() == ["old"]
    assert await _columns(postgres_dsn, pg_schema) == before
