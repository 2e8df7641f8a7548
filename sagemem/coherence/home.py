"""`HomeStore`: the Postgres half of the coherence protocol, on the L3 table.

Each state change is ONE SQL statement performing exactly the HOME_* effects of `sagemem.spec`
its method names, with the meaning `spec/model.py` gives them; the statement's answer is the
branch (the server guard) the agent's core is fed. Some methods read again to build that answer
(a refused commit reads the recorded outcome and the owner; a compare-and-swap that races
creators asks again, at most `_CONDITIONAL_ATTEMPTS` times). No transition is decided here.

The home of a key is its L3 row (`L3Tier`'s table). The home owns four more columns of that
table and adds them itself (`ensure_home_schema`, run before a `HomeStore`'s first statement:
`ALTER TABLE ... ADD COLUMN IF NOT EXISTS`, so a table made by any earlier sagemem is kept):

- `owner`: the grant of an L1 writer, `<agent id>/<incarnation>`, so a restarted agent (a new
  incarnation) is never mistaken for the owner it replaced; NULL when nobody owns the key;
- `owner_deadline`: the end of the owner's lease on the server's clock (renewed by the owner);
- `outbox`: the committed (or reserved) version whose invalidations are still to be published.
- `ops`: the outcomes of the key's latest protocol commits, {operation id: [version, existed]},
  so a commit retried after a lost reply learns its own outcome.

The grant's epoch is the version it reserved: while an agent owns a key the row's version is
that epoch (nobody else can move it), so a write-back fenced by `(owner, version)` is refused
after the grant was revoked, even if the same agent was granted the key again meanwhile.

A delete's answer (whether the key held a value) is exact on PostgreSQL 18 and later (the
statement returns the row it replaced); on older servers it comes from a locked read in the
same statement, which cannot see a row a concurrent writer inserts after the statement began:
then a delete may answer False although it replaced that value (its version and invalidations
are right either way).

While a key is owned, the row holds the reserved version but the value last written back (a
tombstone if none): read owned keys through the protocol (a fill recalls the owner), not with
`L3Tier.read`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg

from sagemem.coherence.core import ABSENT
from sagemem.errors import TierUnavailable
from sagemem.postgres import DDL_LOCK_ID, RowTable, Statements, jsonb_text
from sagemem.spec.vocabulary import Guard
from sagemem.values import JSONValue, check_key, decode_value, encode_value

_CONDITIONAL_ATTEMPTS: Final = 5
# Commit outcomes kept per key (`ops`): a retry after a lost reply comes within the operation
# timeout, long before this many later commits of the same key could push its record out.
_OUTCOMES_KEPT: Final = 32

__all__ = [
    "ABSENT",
    "HOME_COLUMNS",
    "CommitAnswer",
    "HomeRead",
    "HomeStore",
    "ensure_home_schema",
    "owner_token",
]

HOME_COLUMNS: Final = ("owner", "owner_deadline", "outbox", "ops")
_COLUMNS_PRESENT: Final = (
    "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) "
    "AND attname::text = ANY($2::text[]) AND attnum > 0 AND NOT attisdropped"
)

type Fetch = Callable[..., Awaitable[Sequence[asyncpg.Record]]]


def _home_schema_statement(table: str) -> str:
    """One statement adding the home's columns and outbox index to `table` (a quoted
    "schema"."name") where they are missing, under sagemem's DDL lock (a DO block is one
    transaction, so the lock covers the changes)."""
    name = table.rsplit(".", 1)[-1].strip('"')
    return (
        "DO $home$ BEGIN "
        f"PERFORM pg_advisory_xact_lock({DDL_LOCK_ID}); "
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS owner text, "
        "ADD COLUMN IF NOT EXISTS owner_deadline timestamptz, "
        "ADD COLUMN IF NOT EXISTS outbox bigint, "
        "ADD COLUMN IF NOT EXISTS ops jsonb; "
        f"CREATE INDEX IF NOT EXISTS {name}_outbox ON {table} (namespace) "
        "WHERE outbox IS NOT NULL; "
        "END $home$"
    )


async def ensure_home_schema(table: str, fetch: Fetch) -> None:
    """Add the home's columns (`HOME_COLUMNS`) and outbox index to the L3 table `table` unless
    every column is there already (then no DDL runs, so a role without the right to alter
    the table, e.g. a grant's, can use it). `fetch(sql, *args)` runs one statement."""
    rows = await fetch(_COLUMNS_PRESENT, table, list(HOME_COLUMNS))
    if rows and int(str(rows[0][0])) == len(HOME_COLUMNS):
        return
    await fetch(_home_schema_statement(table))


class _SchemaFirst:
    """A table's `Statements` that make sure the home's columns exist before the first one."""

    def __init__(self, statements: Statements, table: str) -> None:
        self._statements = statements
        self._table = table
        self._ready = False
        self._lock = asyncio.Lock()

    async def ensure(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if not self._ready:

                async def fetch(sql: str, *args: object) -> Sequence[asyncpg.Record]:
                    return await self._statements.fetch("home schema", None, sql, *args)

                await ensure_home_schema(self._table, fetch)
                self._ready = True

    async def fetchrow(
        self, operation: str, key: str | None, sql: str, *args: object
    ) -> asyncpg.Record | None:
        await self.ensure()
        return await self._statements.fetchrow(operation, key, sql, *args)

    async def fetch(
        self, operation: str, key: str | None, sql: str, *args: object
    ) -> list[asyncpg.Record]:
        await self.ensure()
        return await self._statements.fetch(operation, key, sql, *args)


def owner_token(agent_id: str, incarnation: str) -> str:
    """The `owner` column's value for an agent's incarnation."""
    return f"{agent_id}/{incarnation}"


def owner_agent(token: str) -> str:
    """The agent id of an `owner` column value."""
    return token.rsplit("/", 1)[0]


@dataclass(frozen=True, slots=True)
class HomeRead:
    """What the home holds for a key: version (0 if never written) and value (or ABSENT), who
    owns it (None, or an owner token) and whether that owner's lease lapsed on the server's
    clock, and the outbox version still to be published (None if none)."""

    version: int
    value: JSONValue
    owner: str | None
    owner_lapsed: bool
    outbox: int | None

    def owned_by_other(self, me: str) -> bool:
        """Guard OWNED_BY_OTHER / FETCH_OWNED for the owner token `me`."""
        return self.owner is not None and self.owner != me


@dataclass(frozen=True, slots=True)
class CommitAnswer:
    """The answer of a commit or ownership request: the branch, the version committed or
    reserved (None when refused), and the current owner when refused."""

    branch: Guard
    version: int | None
    owner: str | None = None
    owner_lapsed: bool = False
    owner_epoch: int | None = None
    existed: bool = False  # a commit: the key held a live value before it
    row_version: int | None = None  # a conflict: the row's version, a tombstone's included


def _recorded_answer(recorded: str) -> CommitAnswer:
    """The answer of a commit that an earlier attempt of the same operation made."""
    version, existed = json.loads(recorded)
    return CommitAnswer(Guard.NOT_OWNED_BY_OTHER, int(version), existed=bool(existed))


class HomeStore:
    """The home statements over `l3`'s table (an `L3Tier`, or any `sagemem.postgres.RowTable`;
    borrowed: the caller connects and closes it), run through its `statements`."""

    def __init__(self, l3: RowTable) -> None:
        self.l3: Final = l3
        self._db: Final = _SchemaFirst(l3.statements, l3.table)
        self.namespace: Final = l3.namespace
        t = l3.table
        where = "t.namespace = $1 AND t.key = $2"
        lease = "clock_timestamp() + $4::bigint * interval '1 millisecond'"

        def record(op: str) -> str:
            """`ops` after a commit of operation `op`: its [version, existed] added, only the
            newest `_OUTCOMES_KEPT` outcomes kept (a retry comes within seconds)."""
            return (
                "(SELECT jsonb_object_agg(kept.k, kept.v) FROM (SELECT e.k, e.v FROM jsonb_each("
                f"coalesce(t.ops, '{{}}'::jsonb) || jsonb_build_object({op}::text, "
                "jsonb_build_array(t.version + 1, NOT t.deleted))) AS e(k, v) "
                f"ORDER BY (e.v->>0)::bigint DESC LIMIT {_OUTCOMES_KEPT}) AS kept)"
            )

        def unseen(op: str) -> str:
            """The operation `op` has not committed yet (a retry must not commit twice)."""
            return f"NOT coalesce(t.ops ? {op}::text, false)"

        self._read: Final = (
            f"SELECT value::text, version, deleted, owner, "
            f"coalesce(owner_deadline < clock_timestamp(), false), outbox FROM {t} AS t "
            f"WHERE {where}"
        )
        # HOME_COMMIT_VERSION: version + 1, the value, release this agent's grant, outbox it.
        # $3 value JSON text (NULL: a delete), $4 this agent's owner token, $5 the operation
        # id (recorded in `ops`; an operation already recorded is not committed again). `prev`
        # locks the row first (a locking read waits for a concurrent writer and sees its
        # result) and is MATERIALIZED and joined into the insert's source, so it is evaluated
        # before the row changes; it tells whether the key held a live value (what a delete
        # returns).
        prev = (
            f"WITH prev AS MATERIALIZED (SELECT NOT t.deleted AS live FROM {t} AS t "
            f"WHERE {where} FOR UPDATE) "
        )
        self._commit: Final = (
            prev + f"INSERT INTO {t} AS t (namespace, key, value, version, deleted, updated_at, "
            "outbox, ops) SELECT $1, $2, $3::text::jsonb, 1, $3::text IS NULL, now(), 1, "
            "jsonb_build_object($5::text, jsonb_build_array(1, false)) "
            "FROM (VALUES (1)) AS one LEFT JOIN prev ON true "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
            "version = t.version + 1, deleted = excluded.deleted, updated_at = now(), "
            f"owner = NULL, owner_deadline = NULL, outbox = t.version + 1, ops = {record('$5')} "
            f"WHERE (t.owner IS NULL OR t.owner = $4::text) AND {unseen('$5')} "
            "RETURNING t.version, coalesce((SELECT live FROM prev), false)"
        )
        # On PostgreSQL 18 and later the commit reports the replaced row itself (RETURNING
        # old.*), which is exact even when the row was inserted by a concurrent writer after
        # the statement's snapshot, where `prev` saw nothing.
        self._commit_returning_old: Final = (
            self._commit.removeprefix(prev)
            .replace("FROM (VALUES (1)) AS one LEFT JOIN prev ON true ", "")
            .replace(
                "RETURNING t.version, coalesce((SELECT live FROM prev), false)",
                "RETURNING t.version, coalesce(NOT old.deleted, false)",
            )
        )
        self._returning_old: bool | None = None
        # The same commit, conditional (compare-and-swap): $5 the expected live version, which
        # this agent's own grant also satisfies (its data may not be written back yet); $6
        # the operation id.
        self._commit_if_version: Final = (
            prev + f"UPDATE {t} AS t SET value = $3::text::jsonb, version = t.version + 1, "
            "deleted = $3::text IS NULL, updated_at = now(), owner = NULL, "
            f"owner_deadline = NULL, outbox = t.version + 1, ops = {record('$6')} "
            "FROM (VALUES (1)) AS one LEFT JOIN prev ON true "
            f"WHERE {where} AND t.version = $5 "
            "AND ((t.owner IS NULL AND NOT t.deleted) OR t.owner = $4::text) "
            f"AND {unseen('$6')} "
            "RETURNING t.version, coalesce((SELECT live FROM prev), false)"
        )
        # ... expecting the key not to exist (never written, or deleted).
        self._commit_if_absent: Final = self._commit.replace(
            "WHERE (t.owner IS NULL OR t.owner = $4::text)",
            "WHERE t.deleted AND (t.owner IS NULL OR t.owner = $4::text)",
        )

        # Both conditional commits, answering with the row as their own lock saw it, so a
        # refusal names a version that was current while the statement ran (a second read
        # could see a later one). Columns: committed version (NULL: refused), existed, then
        # the locked row's version, liveness, owner and whether the owner's lease lapsed
        # (all NULL if the key had no row), and the operation's recorded outcome (a JSON
        # [version, existed] if an earlier attempt of it committed, else NULL).
        def answering(statement: str, op: str) -> str:
            locked = (
                f"WITH prev AS MATERIALIZED (SELECT NOT t.deleted AS live, t.version, t.owner, "
                "coalesce(t.owner_deadline < clock_timestamp(), false) AS lapsed, "
                f"(t.ops -> {op}::text)::text AS recorded "
                f"FROM {t} AS t WHERE {where} FOR UPDATE), "
            )
            body = statement.removeprefix(prev).replace(
                "RETURNING t.version, coalesce((SELECT live FROM prev), false)",
                "RETURNING t.version",
            )
            return (
                locked
                + f"done AS ({body}) "
                + "SELECT (SELECT version FROM done), coalesce(prev.live, false), prev.version, "
                "prev.live, prev.owner, prev.lapsed, prev.recorded FROM (VALUES (1)) AS one "
                "LEFT JOIN prev ON true"
            )

        self._cas_if_version: Final = answering(self._commit_if_version, "$6")
        self._cas_if_absent: Final = answering(self._commit_if_absent, "$5")
        self._recorded: Final = f"SELECT (t.ops -> $3::text)::text FROM {t} AS t WHERE {where}"
        # Release this agent's own lapsed grant (HOME_REVOKE_GRANT for OWNER_LEASE_LAPSED by
        # the owner's own clock: its Exclusive entry lapsed and was dropped).
        self._release_own: Final = (
            f"UPDATE {t} AS t SET owner = NULL, owner_deadline = NULL, version = t.version + 1 "
            f"WHERE {where} "
            "AND t.owner = $3 RETURNING t.version"
        )
        # HOME_RESERVE_AND_GRANT: version + 1 held at the owner ($3), lease $4 ms, outbox it.
        self._acquire: Final = (
            f"INSERT INTO {t} AS t (namespace, key, value, version, deleted, updated_at, "
            "owner, owner_deadline, outbox) "
            f"VALUES ($1, $2, NULL, 1, true, now(), $3, {lease}, 1) "
            "ON CONFLICT (namespace, key) DO UPDATE SET version = t.version + 1, "
            f"owner = $3, owner_deadline = {lease}, outbox = t.version + 1, updated_at = now() "
            "WHERE t.owner IS NULL OR t.owner = $3 RETURNING t.version"
        )
        # HOME_STORE_AND_RELEASE / HOME_STORE_KEEP_GRANT, fenced by (owner $3, epoch $4).
        fenced = f"WHERE {where} AND t.owner = $3 AND t.version = $4"
        self._write_back: Final = (
            f"UPDATE {t} AS t SET value = $5::text::jsonb, deleted = false, updated_at = now(), "
            f"owner = NULL, owner_deadline = NULL {fenced} RETURNING t.version"
        )
        self._flush: Final = (
            f"UPDATE {t} AS t SET value = $5::text::jsonb, deleted = false, updated_at = now(), "
            "owner_deadline = greatest(t.owner_deadline, clock_timestamp() + "
            f"$6::bigint * interval '1 millisecond') {fenced} RETURNING t.version"
        )
        self._renew: Final = (
            f"UPDATE {t} AS t SET owner_deadline = clock_timestamp() + "
            "$4::bigint * interval '1 millisecond' "
            "WHERE t.namespace = $1 AND t.key = ANY($2::text[]) AND t.owner = $3 RETURNING t.key"
        )
        # HOME_REVOKE_GRANT (guard OWNER_LEASE_LAPSED on the server's clock). The grant's
        # version may name a value the owner acknowledged and never wrote back, so the value
        # the row keeps gets a version of its own (version + 1): no version names two values.
        self._revoke: Final = (
            f"UPDATE {t} AS t SET owner = NULL, owner_deadline = NULL, "
            f"version = t.version + 1 WHERE {where} "
            "AND t.owner = $3 AND t.owner_deadline < clock_timestamp() RETURNING t.version"
        )
        self._outbox: Final = f"SELECT outbox FROM {t} AS t WHERE {where}"
        # HOME_CLEAR_OUTBOX for the version relayed (a newer commit's entry stays).
        # The clear commits without waiting for its WAL flush (synchronous_commit off for this
        # one transaction): a clear lost in a server crash leaves the outbox entry, which the
        # sweeper relays again, exactly as after a writer that died between relay and clear.
        # The commit itself stays durable. It halves what a write-through waits for on disk.
        self._clear_outbox: Final = (
            "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)) "
            f"UPDATE {t} AS t SET outbox = NULL FROM relaxed WHERE {where} AND t.outbox <= $3 "
            "RETURNING t.version"
        )
        self._stale_outboxes: Final = (
            f"SELECT key, outbox FROM {t} AS t WHERE t.namespace = $1 AND t.outbox IS NOT NULL "
            "AND t.updated_at < now() - $2::bigint * interval '1 millisecond' LIMIT 256"
        )
        self._lapsed_owners: Final = (
            f"SELECT key, owner FROM {t} AS t WHERE t.namespace = $1 AND t.owner IS NOT NULL "
            "AND t.owner_deadline < clock_timestamp() LIMIT 256"
        )
        self._live_keys = (
            f"SELECT key FROM {t} WHERE namespace = $1 "
            "AND (NOT deleted OR owner IS NOT NULL) ORDER BY key"
        )

    async def ensure_schema(self) -> None:
        """Add the home's columns to the table if they are missing (done anyway before this
        store's first statement; call it with an administrator's table to prepare a table
        that roles without the right to alter it will use)."""
        await self._db.ensure()

    def _value_text(self, value: JSONValue) -> str:
        return jsonb_text(value, encode_value(value, size_max_bytes=self.l3.value_size_max_bytes))

    async def read(self, key: str) -> HomeRead:
        """HOME_READ (and the ownership and outbox facts the fill's branch depends on)."""
        row = await self._db.fetchrow("home read", key, self._read, self.namespace, key)
        if row is None:
            return HomeRead(0, ABSENT, None, False, None)
        value = ABSENT if row[2] else decode_value(row[0])
        outbox = None if row[5] is None else int(row[5])
        return HomeRead(int(row[1]), value, row[3], bool(row[4]), outbox)

    async def commit(self, key: str, value: JSONValue, me: str, operation_id: str) -> CommitAnswer:
        """HOME_COMMIT: commit `value` (ABSENT: a delete) unless another agent owns the key.

        Idempotent per `operation_id`: if an earlier attempt of the same operation committed
        (its reply was lost), nothing is committed again and that commit's answer is returned.
        """
        check_key(key)
        text = None if value is ABSENT else self._value_text(value)
        if self._returning_old is None:
            found = await self._db.fetchrow("server version", None, "SHOW server_version_num")
            self._returning_old = found is not None and int(found[0]) >= 180000
        sql = self._commit_returning_old if self._returning_old else self._commit
        row = await self._db.fetchrow(
            "home commit", key, sql, self.namespace, key, text, me, operation_id
        )
        if row is not None:
            return CommitAnswer(Guard.NOT_OWNED_BY_OTHER, int(row[0]), existed=bool(row[1]))
        found = await self._db.fetchrow(
            "home commit outcome", key, self._recorded, self.namespace, key, operation_id
        )
        if found is not None and found[0] is not None:
            return _recorded_answer(found[0])
        return await self._refused(key)

    async def commit_if(
        self, key: str, value: JSONValue, me: str, expected: int | None, operation_id: str
    ) -> CommitAnswer:
        """HOME_COMMIT of a compare-and-swap: commit only if the key is live at `expected`
        (None: does not exist). Branches: NOT_OWNED_BY_OTHER (committed), OWNED_BY_OTHER
        (recall the owner and retry), GRANT_LOST (HOME_CONFLICT: `version` is the key's
        current live version, or None if it does not exist; nothing was committed).
        Idempotent per `operation_id`, as `commit`: a retry after a lost reply answers what
        the first attempt did, and never commits without the version check."""
        check_key(key)
        text = None if value is ABSENT else self._value_text(value)
        for _ in range(_CONDITIONAL_ATTEMPTS):
            if expected is None:
                row = await self._db.fetchrow(
                    "home commit-if",
                    key,
                    self._cas_if_absent,
                    self.namespace,
                    key,
                    text,
                    me,
                    operation_id,
                )
            else:
                row = await self._db.fetchrow(
                    "home commit-if",
                    key,
                    self._cas_if_version,
                    self.namespace,
                    key,
                    text,
                    me,
                    expected,
                    operation_id,
                )
            assert row is not None, "the answering statement always returns one row"
            committed, existed, version, live, owner, lapsed, recorded = row
            if committed is not None:
                return CommitAnswer(Guard.NOT_OWNED_BY_OTHER, int(committed), existed=existed)
            if recorded is not None:
                return _recorded_answer(recorded)
            if version is None:
                if expected is not None:
                    # No row when the statement locked: the key does not exist, so a swap
                    # expecting a version is refused (a creator racing with it came later).
                    return CommitAnswer(Guard.GRANT_LOST, None, row_version=0)
                continue  # no row when locked, but one was inserted meanwhile: ask again
            if owner is not None and owner != me:
                return CommitAnswer(
                    Guard.OWNED_BY_OTHER, None, owner, bool(lapsed), owner_epoch=int(version)
                )
            if owner == me:
                # A grant this agent no longer uses (its Exclusive copy lapsed): give it up,
                # so the home does not record it as the owner of a key it is refused.
                await self._db.fetchrow(
                    "home release own grant", key, self._release_own, self.namespace, key, me
                )
            return CommitAnswer(
                Guard.GRANT_LOST, int(version) if live else None, row_version=int(version)
            )
        raise TierUnavailable(
            f"compare-and-swap of key {key!r} kept racing with concurrent creators "
            f"({_CONDITIONAL_ATTEMPTS} attempts); retry",
            tier="L3",
        )

    async def _refused(self, key: str) -> CommitAnswer:
        current = await self.read(key)
        return CommitAnswer(
            Guard.OWNED_BY_OTHER,
            None,
            current.owner,
            current.owner_lapsed,
            owner_epoch=current.version if current.owner is not None else None,
        )

    async def acquire(self, key: str, me: str, lease_ms: int) -> CommitAnswer:
        """HOME_ACQUIRE: reserve the next version and grant it to `me` unless owned by another."""
        check_key(key)
        row = await self._db.fetchrow(
            "home acquire", key, self._acquire, self.namespace, key, me, lease_ms
        )
        if row is not None:
            return CommitAnswer(Guard.NOT_OWNED_BY_OTHER, int(row[0]))
        return await self._refused(key)

    async def write_back(
        self, key: str, me: str, epoch: int, value: JSONValue, *, keep_ms: int | None = None
    ) -> Guard:
        """HOME_WRITE_BACK (release) or, with `keep_ms`, HOME_FLUSH (keep the grant, lease at
        least `keep_ms` more): GRANT_HELD if stored, GRANT_LOST if the grant was revoked."""
        text = self._value_text(value)
        if keep_ms is None:
            row = await self._db.fetchrow(
                "home write-back", key, self._write_back, self.namespace, key, me, epoch, text
            )
        else:
            row = await self._db.fetchrow(
                "home flush", key, self._flush, self.namespace, key, me, epoch, text, keep_ms
            )
        return Guard.GRANT_LOST if row is None else Guard.GRANT_HELD

    async def renew(self, keys: list[str], me: str, lease_ms: int) -> set[str]:
        """Extend `me`'s lease on `keys`; return the keys it still owns."""
        rows = await self._db.fetch(
            "home renew", None, self._renew, self.namespace, keys, me, lease_ms
        )
        return {str(row[0]) for row in rows}

    async def revoke(self, key: str, owner: str) -> bool:
        """HOME_EXPIRE_OWNER: drop `owner`'s grant if its lease lapsed; True if revoked."""
        row = await self._db.fetchrow("home revoke", key, self._revoke, self.namespace, key, owner)
        return row is not None

    async def outbox(self, key: str) -> int | None:
        """The version whose invalidations are still to be published (None: outbox empty)."""
        row = await self._db.fetchrow("home outbox", key, self._outbox, self.namespace, key)
        return None if row is None or row[0] is None else int(row[0])

    async def clear_outbox(self, key: str, version: int) -> bool:
        """HOME_CLEAR_OUTBOX after `version` was relayed (a newer entry is kept)."""
        row = await self._db.fetchrow(
            "home clear outbox", key, self._clear_outbox, self.namespace, key, version
        )
        return row is not None

    async def stale_outboxes(self, older_than_ms: int) -> list[tuple[str, int]]:
        """Outbox entries not relayed for `older_than_ms` (their writer may have died)."""
        rows = await self._db.fetch(
            "home outbox sweep", None, self._stale_outboxes, self.namespace, older_than_ms
        )
        return [(str(row[0]), int(row[1])) for row in rows]

    async def lapsed_owners(self) -> list[tuple[str, str]]:
        """(key, owner) of grants whose lease lapsed on the server's clock."""
        rows = await self._db.fetch("home owner sweep", None, self._lapsed_owners, self.namespace)
        return [(str(row[0]), str(row[1])) for row in rows]

    async def live_keys(self) -> list[str]:
        """Every key of this namespace with a live value or an owner (sorted): the keys the
        protocol holds, including a tier-0 write whose value is still in its owner's L1."""
        rows = await self._db.fetch("home live keys", None, self._live_keys, self.namespace)
        return [str(row[0]) for row in rows]
