"""L3: the global home of every key, in Postgres JSONB, with a version per key and compare-and-swap.

One table (`<schema>.l3_entries`) holds every namespace; `(namespace, key)` is the primary key.
A row is live or a tombstone: `delete()` and `clear()` keep the row, drop its value and bump its
version, so the versions of a key only ever grow, also across delete and re-create, and a
compare-and-swap holding a version from before a delete can never succeed (no ABA). Every
mutation is one atomic statement (`INSERT ... ON CONFLICT ... WHERE ... RETURNING` or
`UPDATE ... WHERE version = $n RETURNING`), so the row lock Postgres takes is the only
serialisation point: two concurrent creators cannot both win. See
docs/decisions/0002-l3-versions-and-cas.md for the choices and their consequences.

Values go in as JSON text cast to JSONB (`$3::text::jsonb`) and come out as `value::text`, so no
driver codec is involved. JSONB stores numbers as `numeric`, which would print a float such as
1e16 back as the integer 10000000000000000; floats are therefore sent in positional notation
with a decimal point, which `numeric` keeps, so every value reads back equal and with the same
types (the one visible difference: JSONB has no negative zero, so -0.0 reads back as 0.0, which
compares equal).

The shared machinery (`VersionedRowTier`) also serves the semantic tier (`sagemem.tiers.dram`).
This module must never let an asyncpg exception escape: driver errors become `TierUnavailable`
with the driver's exception as the cause.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

import asyncpg

from sagemem import endpoints
from sagemem._driver_errors import not_connected, tier_unavailable
from sagemem._lifecycle import AsyncResource
from sagemem._renamed import UNSET, Unset, renamed
from sagemem.errors import ConfigurationError, InvalidValueError, VersionConflict
from sagemem.postgres import (
    DDL_LOCK_ID,
    POSTGRES_DRIVER_ERRORS,
    POSTGRES_HINT,
    ConnectionPool,
    LeaseExpired,
    Statements,
    jsonb_text,
)
from sagemem.tiers.base import TierEntry
from sagemem.values import (
    VALUE_SIZE_MAX_BYTES,
    JSONValue,
    check_expected_version,
    check_key,
    check_namespace,
    decode_value,
    encode_value,
)

__all__ = [
    "POSTGRES_DRIVER_ERRORS",
    "POSTGRES_HINT",
    "SCHEMA_PATTERN",
    "ConnectionPool",
    "L3Tier",
    "LeaseExpired",
    "VersionedRowTier",
    "jsonb_text",
]

SCHEMA_PATTERN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# A create-if-absent that races deletes is retried this often before it reports a conflict.
_CREATE_ATTEMPTS: Final = 5


def check_schema(schema: object) -> str:
    """Return `schema` if it is a plain SQL identifier, else raise `ConfigurationError`."""
    if type(schema) is not str or not SCHEMA_PATTERN.fullmatch(schema):
        raise ConfigurationError(
            f"schema {schema!r} is invalid: use 1 to 63 characters from letters, digits and "
            "'_', not starting with a digit"
        )
    return schema


def _check_positive(owner: str, name: str, value: object) -> float:
    if (
        type(value) not in (int, float)
        or not math.isfinite(value)  # type: ignore[arg-type]  # int or float by the check above
        or value <= 0  # type: ignore[operator]  # int or float by the check above
    ):
        raise ConfigurationError(f"{owner} {name} must be a positive number, got {value!r}")
    return float(value)  # type: ignore[arg-type]  # int or float by the check above


@dataclass(frozen=True, slots=True)
class _Statements:
    """The SQL of a versioned-row table; every mutation is one atomic statement."""

    read: str
    version: str
    write: str
    create: str
    swap: str
    fill: str
    delete: str
    delete_if_version: str
    clear: str


def _build_statements(table: str, extras: tuple[str, ...]) -> _Statements:
    """The statements for `table`.

    Parameters: $1 namespace, $2 key, $3 value JSON text, then one per extra column, then the
    expected (swap) or proposed (fill) version; delete_if_version takes the version as $3.
    """
    first_extra = 4
    extra_params = [f"${first_extra + index}" for index in range(len(extras))]
    last_param = f"${first_extra + len(extras)}"
    insert_columns = ", ".join(
        ["namespace", "key", "value", "version", "deleted", "updated_at", *extras]
    )
    excluded_extras = "".join(f", {column} = excluded.{column}" for column in extras)
    assigned_extras = "".join(
        f", {column} = {param}" for column, param in zip(extras, extra_params, strict=True)
    )
    null_extras = "".join(f", {column} = NULL" for column in extras)
    values_extras = "".join(f", {param}" for param in extra_params)
    live = "t.namespace = $1 AND t.key = $2 AND NOT t.deleted"

    def insert(version_sql: str) -> str:
        return (
            f"INSERT INTO {table} AS t ({insert_columns}) "
            f"VALUES ($1, $2, $3::text::jsonb, {version_sql}, false, now(){values_extras}) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
        )

    sql_read = f"SELECT value::text, version FROM {table} AS t WHERE {live}"
    sql_version = f"SELECT version FROM {table} AS t WHERE {live}"
    # Unconditional write: insert at version 1, or take the row lock and bump its version
    # (a tombstone's version too, so re-creation continues the sequence).
    sql_write = (
        insert("1") + "version = t.version + 1, deleted = false, "
        f"updated_at = excluded.updated_at{excluded_extras} RETURNING version"
    )
    # "Must not exist yet": a concurrent creator's insert makes ours conflict, and the
    # WHERE sees the locked, latest row, so only a tombstone can be revived.
    sql_create = sql_write.replace(" RETURNING version", " WHERE t.deleted RETURNING version")
    # "Must be live at version n": UPDATE re-checks the WHERE on the latest row version
    # after waiting for a concurrent writer, so a lost update is impossible.
    sql_swap = (
        f"UPDATE {table} AS t SET value = $3::text::jsonb, version = t.version + 1, "
        f"updated_at = now(){assigned_extras} "
        f"WHERE {live} AND t.version = {last_param} RETURNING t.version"
    )
    # A promotion from a slower tier: only where the key is absent or a tombstone, never
    # moving the version backwards.
    sql_fill = (
        insert(f"{last_param}::bigint")
        + "version = greatest(t.version + 1, excluded.version), deleted = false, "
        f"updated_at = excluded.updated_at{excluded_extras} WHERE t.deleted"
    )
    tombstone = (
        f"UPDATE {table} AS t SET value = NULL, version = t.version + 1, deleted = true, "
        f"updated_at = now(){null_extras} WHERE "
    )
    sql_delete = tombstone + live + " RETURNING t.version"
    sql_delete_if_version = tombstone + live + " AND t.version = $3 RETURNING t.version"
    sql_clear = tombstone + "t.namespace = $1 AND NOT t.deleted"

    return _Statements(
        read=sql_read,
        version=sql_version,
        write=sql_write,
        create=sql_create,
        swap=sql_swap,
        fill=sql_fill,
        delete=sql_delete,
        delete_if_version=sql_delete_if_version,
        clear=sql_clear,
    )


class VersionedRowTier(AsyncResource):
    """Versioned rows of JSON values in one Postgres table, shared by L3 and the semantic tier.

    Subclasses name the table and may add columns (`_extra_columns`) whose values they compute
    per write (`_extra_values`) and which tombstones set to NULL. The tier owns its connection pool:
    `connect()` creates it (and the schema and table if missing), `aclose()` closes it.
    """

    name: str = "L3"
    _table: ClassVar[str] = "l3_entries"
    _extra_columns: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        postgres_dsn: str | None = None,
        *,
        namespace: str = "default",
        schema: str = "sagemem",
        value_size_max_bytes: int = VALUE_SIZE_MAX_BYTES,
        pool_size_max: int = 10,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 30.0,
        dsn: str | Unset | None = UNSET,
    ) -> None:
        dsn = renamed(
            f"{type(self).__name__}",
            "postgres_dsn",
            postgres_dsn,
            None,
            "dsn",
            dsn,
            deprecated=False,
        )
        if dsn is not None and (type(dsn) is not str or not dsn):
            raise ConfigurationError(
                f"{self.name} postgres_dsn must be a postgresql:// DSN string or None, got "
                f"{dsn!r}; None uses SAGEMEM_POSTGRES_DSN or the embedded server"
            )
        self.namespace: Final = check_namespace(namespace)
        self.schema: Final = check_schema(schema)
        if type(value_size_max_bytes) is not int or value_size_max_bytes < 1:
            raise ConfigurationError(
                f"{self.name} value_size_max_bytes must be a positive int, "
                f"got {value_size_max_bytes!r}"
            )
        self.value_size_max_bytes: Final = value_size_max_bytes
        if type(pool_size_max) is not int or pool_size_max < 1:
            raise ConfigurationError(
                f"{self.name} pool_size_max must be a positive int, got {pool_size_max!r}"
            )
        self._pool_size_max: Final = pool_size_max
        self._connect_timeout_s: Final = _check_positive(
            self.name, "connect_timeout_s", connect_timeout_s
        )
        self._command_timeout_s: Final = _check_positive(
            self.name, "command_timeout_s", command_timeout_s
        )
        # The client-side backstop, above the server's lock_timeout so that a blocked write
        # is aborted (with a definite outcome) by the server first.
        self._lease_time_max_s: Final = self._command_timeout_s + max(
            1.0, self._command_timeout_s / 2
        )
        self._dsn_argument: Final = dsn
        self._pool: ConnectionPool | None = None
        self.statements: Final = Statements(self.name, lambda: self._pool)
        """One statement on this tier's pool with its error translation (the coherence home
        runs its own statements through it)."""
        self._connect_lock = asyncio.Lock()
        self.table: Final = f'"{self.schema}"."{self._table}"'
        self._sql: Final = _build_statements(self.table, self._extra_columns)

    def __repr__(self) -> str:
        state = "connected" if self._pool is not None else "not connected"
        return (
            f"{type(self).__name__}(namespace={self.namespace!r}, schema={self.schema!r}, {state})"
        )

    def _ddl(self) -> list[str]:
        """Statements creating the schema, table and indexes if missing (run under a lock)."""
        return [
            f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"',
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "namespace text NOT NULL, key text NOT NULL, value jsonb, "
            "version bigint NOT NULL CHECK (version >= 1), deleted boolean NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (namespace, key), "
            "CHECK (deleted = (value IS NULL)))",
        ]

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Resolve the DSN, create missing tables, open the pool (idempotent)."""
        async with self._connect_lock:
            if self._pool is not None:
                return
            dsn = self._dsn_argument
            if dsn is None:
                dsn = await endpoints.resolve("postgres")
            try:
                first = await self._open_connection(dsn)
                try:
                    await self._create_objects(first)
                    async with asyncio.timeout(self._connect_timeout_s):
                        await self._init_connection(first)
                except BaseException:
                    first.terminate()
                    raise
            except asyncpg.ClientConfigurationError as error:
                raise ConfigurationError(
                    f"{self.name} DSN {endpoints.redacted_url(dsn)!r} is not valid ({error}); use "
                    "postgresql://user:password@host:port/database or ...?host=/socket/dir"
                ) from error
            except POSTGRES_DRIVER_ERRORS as error:
                raise tier_unavailable(self.name, "connect", error, hint=POSTGRES_HINT) from error
            pool = ConnectionPool(
                lambda: self._open_initialised_connection(dsn),
                size_max=self._pool_size_max,
                acquire_timeout_s=self._command_timeout_s,
                lease_time_max_s=self._lease_time_max_s,
            )
            pool.add_idle(first)
            pool.start()
            self._pool = pool

    async def _open_connection(self, dsn: str) -> asyncpg.Connection:
        connection: asyncpg.Connection = await asyncpg.connect(
            dsn,
            timeout=self._connect_timeout_s,
            # No per-statement client timer (it costs ~10% of a read): the server's
            # lock_timeout aborts a blocked statement with a definite outcome, and the pool's
            # watchdog bounds everything else (a server or network that stopped answering).
            command_timeout=None,
            server_settings=self._server_settings(),
        )
        return connection

    async def _open_initialised_connection(self, dsn: str) -> asyncpg.Connection:
        connection = await self._open_connection(dsn)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._init_connection(connection)
        except BaseException:
            connection.terminate()
            raise
        return connection

    async def _objects_exist(self, connection: asyncpg.Connection) -> bool:
        """Whether the table and every column the statements use exist already (then no DDL
        runs, so a role without CREATE rights, e.g. a scoped agent's, can connect)."""
        rows = await connection.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2",
            self.schema,
            self._table,
        )
        present = {str(row[0]) for row in rows}
        return set(self._required_columns()) <= present

    def _required_columns(self) -> tuple[str, ...]:
        """The columns the tier's statements need (subclasses add theirs)."""
        return (
            "namespace",
            "key",
            "value",
            "version",
            "deleted",
            "updated_at",
            *self._extra_columns,
        )

    async def _create_objects(self, connection: asyncpg.Connection) -> None:
        # The pool and its watchdog do not exist yet: bound the whole set-up here.
        async with asyncio.timeout(self._lease_time_max_s):
            if await self._objects_exist(connection):
                await self._check_objects(connection)
                return
        async with asyncio.timeout(self._lease_time_max_s), connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK_ID)
            await self._create_objects_locked(connection)
        async with asyncio.timeout(self._lease_time_max_s):
            await self._check_objects(connection)

    async def _create_objects_locked(self, connection: asyncpg.Connection) -> None:
        """Run the DDL; called inside a transaction holding sagemem's DDL advisory lock."""
        for statement in self._ddl():
            await connection.execute(statement)

    async def _check_objects(self, connection: asyncpg.Connection) -> None:
        """Hook: verify existing objects fit this tier's settings (after the DDL ran)."""

    def _server_settings(self) -> dict[str, str]:
        """Session settings sent when each connection opens (subclasses may add some).

        `lock_timeout` makes the server abort a statement that waits for a lock (a row another
        transaction is writing, the DDL advisory lock) longer than `command_timeout_s`, rolling
        it back: the caller gets a `TierUnavailable` and knows the write did not happen.
        Unlike `statement_timeout` it costs nothing for the statements that do not wait.
        """
        return {"lock_timeout": str(max(1, round(self._command_timeout_s * 1000)))}

    async def _init_connection(self, connection: asyncpg.Connection) -> None:
        """Hook: set up each new pool connection (codecs, settings)."""

    async def aclose(self) -> None:
        """Close the pool this tier owns (idempotent; never raises a driver error)."""
        async with self._connect_lock:
            pool = self._pool
            self._pool = None
            if pool is not None:
                await pool.close(self._command_timeout_s)

    # -- reads ----------------------------------------------------------------------------

    async def read(self, key: str) -> TierEntry | None:
        """The live entry for `key` with its version, or None (absent or deleted)."""
        check_key(key)
        row = await self._fetchrow("read", key, self._sql.read, self.namespace, key)
        if row is None:
            return None
        return TierEntry(decode_value(row[0]), row[1])

    async def version(self, key: str) -> int | None:
        """The version of the live entry for `key`, or None (absent or deleted)."""
        check_key(key)
        row = await self._fetchrow("version", key, self._sql.version, self.namespace, key)
        return None if row is None else int(row[0])

    async def exists(self, key: str) -> bool:
        """True if `key` has a live entry (a stored None counts)."""
        return await self.version(key) is not None

    async def get(self, key: str, default: JSONValue = None) -> JSONValue:
        """The value of `key`, or `default` if it is absent or deleted."""
        entry = await self.read(key)
        return default if entry is None else entry.value

    # -- writes ---------------------------------------------------------------------------

    async def write(self, key: str, value: JSONValue) -> int:
        """Store `value` unconditionally; return the key's new version."""
        parameters = await self._row_parameters(key, value)
        row = await self._fetchrow("write", key, self._sql.write, *parameters)
        assert row is not None, "INSERT ... ON CONFLICT DO UPDATE always returns the row"
        return int(row[0])

    async def set(self, key: str, value: JSONValue) -> int:
        """Store `value` unconditionally (same as `write`); return the new version."""
        return await self.write(key, value)

    async def compare_and_swap(
        self, key: str, value: JSONValue, expected_version: int | None
    ) -> int:
        """Store `value` only if `key` is at `expected_version`; return the new version.

        `expected_version=None` means "must not exist yet" (absent, or deleted); an int `n`
        means "must be live at version n" (so it fails for an absent or deleted key). On a
        mismatch nothing is written and `VersionConflict` names the version found.
        """
        expected = check_expected_version(expected_version)
        parameters = await self._row_parameters(key, value)
        if expected is not None:
            row = await self._fetchrow(
                "compare_and_swap", key, self._sql.swap, *parameters, expected
            )
            if row is None:
                raise VersionConflict(key, expected=expected, actual=await self.version(key))
            return int(row[0])
        for _ in range(_CREATE_ATTEMPTS):
            row = await self._fetchrow("compare_and_swap", key, self._sql.create, *parameters)
            if row is not None:
                return int(row[0])
            actual = await self.version(key)
            if actual is not None:
                raise VersionConflict(key, expected=None, actual=actual)
            # Live when the create ran, deleted again by the time we looked: the key does not
            # exist now, so "must not exist yet" may hold: try again rather than report a
            # conflict that names no version.
        raise VersionConflict(key, expected=None, actual=await self.version(key))

    async def fill(self, key: str, entry: TierEntry) -> None:
        """Install a copy promoted from a slower tier, only where `key` has no live entry.

        The row takes `entry.version` (at least 1), or for a tombstone the larger of that and
        the tombstone's version + 1, so versions never move backwards.
        """
        version = entry.version
        if version is not None and type(version) is not int:
            raise InvalidValueError(
                f"TierEntry.version must be None or an int, got {type(version).__name__} "
                f"{version!r}"
            )
        parameters = await self._row_parameters(key, entry.value)
        await self._execute("fill", key, self._sql.fill, *parameters, max(1, version or 1))

    async def delete(self, key: str) -> bool:
        """Delete `key` (its version is bumped and kept); True if it had a live entry."""
        check_key(key)
        row = await self._fetchrow("delete", key, self._sql.delete, self.namespace, key)
        return row is not None

    async def delete_if_version(self, key: str, expected_version: int) -> int:
        """Delete `key` only if it is live at `expected_version`; return the tombstone's version.

        Raises `VersionConflict` (nothing deleted) when the key is absent, deleted or at
        another version.
        """
        check_key(key)
        expected = check_expected_version(expected_version)
        if expected is None:
            raise InvalidValueError(
                "delete_if_version needs the int version to delete; use delete() to delete "
                "whatever version is there"
            )
        row = await self._fetchrow(
            "delete_if_version", key, self._sql.delete_if_version, self.namespace, key, expected
        )
        if row is None:
            raise VersionConflict(key, expected=expected, actual=await self.version(key))
        return int(row[0])

    async def clear(self) -> None:
        """Delete every live key of this namespace (keeping versions); others are untouched."""
        await self._execute("clear", None, self._sql.clear, self.namespace)

    # -- internals ------------------------------------------------------------------------

    async def _row_parameters(self, key: str, value: JSONValue) -> list[object]:
        """Checked parameters $1.. of a row write: namespace, key, JSONB text, extra columns."""
        check_key(key)
        canonical_text = encode_value(value, size_max_bytes=self.value_size_max_bytes)
        self._connected()  # before computing extra columns, which may call a remote embedder
        extras = await self._extra_values(value, canonical_text)
        return [self.namespace, key, jsonb_text(value, canonical_text), *extras]

    async def _extra_values(self, value: JSONValue, canonical_text: str) -> Sequence[object]:
        """Hook: values of `_extra_columns` for a row holding `value` (JSON `canonical_text`)."""
        return ()

    def _connected(self) -> ConnectionPool:
        pool = self._pool
        if pool is None:
            raise not_connected(self.name)
        return pool

    # The tier's own statements go through `statements` (sagemem.postgres), as the home's do.

    async def _fetchrow(
        self, operation: str, key: str | None, sql: str, *args: object
    ) -> asyncpg.Record | None:
        return await self.statements.fetchrow(operation, key, sql, *args)

    async def _fetch(
        self, operation: str, key: str | None, sql: str, *args: object
    ) -> list[asyncpg.Record]:
        return await self.statements.fetch(operation, key, sql, *args)

    async def _execute(self, operation: str, key: str | None, sql: str, *args: object) -> None:
        await self.statements.execute(operation, key, sql, *args)


class L3Tier(VersionedRowTier):
    """L3: the global home of every key, Postgres JSONB with versions and compare-and-swap.

    `postgres_dsn=None` takes `SAGEMEM_POSTGRES_DSN`, else the embedded server (started or
    reused by `sagemem.services`) when `connect()` runs (`dsn=`, the design note's spelling, is
    accepted too). The tier owns its connection pool (at most `pool_size_max` connections):
    `connect()` creates it, and the schema and table if they are missing (safe when several
    processes connect at once), `aclose()` closes it. The server aborts (and rolls back) a
    statement that waits for a lock longer than `command_timeout_s`, a command waits at most as
    long for a free connection, and no statement runs more than 1.5 times as long (at least 1 s
    more) before the client gives up; connecting waits at most `connect_timeout_s`. A caller
    that cancels a write mid-statement cannot know whether it committed, as with any lost reply:
    re-read the version.
    """

    name: str = "L3"
    _table: ClassVar[str] = "l3_entries"

    async def live_keys(self) -> list[str]:
        """Every key of this namespace with a live value (sorted). With a coherence protocol
        on the table, `sagemem.coherence.home.HomeStore.live_keys` also lists the keys an
        agent owns whose value is still in its L1."""
        rows = await self._fetch(
            "live keys",
            None,
            f"SELECT key FROM {self.table} WHERE namespace = $1 AND NOT deleted ORDER BY key",
            self.namespace,
        )
        return [str(row[0]) for row in rows]
