"""L3 against a real Postgres: JSONB round trips, versions, compare-and-swap semantics, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings

from sagemem.errors import (
    ClosedResourceError,
    ConfigurationError,
    InvalidKeyError,
    InvalidValueError,
    TierUnavailable,
    ValueTooLargeError,
    VersionConflict,
)
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l3 import ConnectionPool, L3Tier, LeaseExpired
from sagemem.values import JSONValue
from tests.json_samples import assert_same_json, json_values


@pytest.fixture
async def l3(postgres_dsn: str, namespace: str, pg_schema: str) -> AsyncIterator[L3Tier]:
    """A connected L3 on a fresh schema and namespace, closed after the test."""
    async with L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema) as tier:
        yield tier


async def _rows(connection: asyncpg.Connection, schema: str) -> list[tuple[object, ...]]:
    records = await connection.fetch(
        f'SELECT namespace, key, value::text, version, deleted FROM "{schema}".l3_entries '
        "ORDER BY namespace, key"
    )
    return [tuple(record) for record in records]


# The tier fixture is shared by all examples on purpose: each example writes the same key.
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=json_values)
async def test_any_json_value_reads_back_equal_with_the_same_types(
    l3: L3Tier, value: JSONValue
) -> None:
    """Generated JSON values survive the JSONB round trip equal and with the same types."""
    await l3.set("generated", value)
    entry = await l3.read("generated")
    assert entry is not None
    assert_same_json(value, entry.value)


async def test_each_write_returns_the_next_version(l3: L3Tier) -> None:
    """Unconditional writes return 1, 2, 3 and read() carries the latest version."""
    assert [await l3.write("v", n) for n in range(3)] == [1, 2, 3]
    assert TierEntry(2, 3) == await l3.read("v")
    assert await l3.version("v") == 3
    assert await l3.version("never") is None


async def test_versions_grow_across_delete_recreate_and_clear(l3: L3Tier) -> None:
    """Deleting or clearing keeps the version: a re-created key continues above it."""
    seen = [await l3.write("k", "a"), await l3.write("k", "b")]
    assert await l3.delete("k")
    assert await l3.version("k") is None
    seen.append(await l3.write("k", "c"))
    await l3.clear()
    seen.append(await l3.compare_and_swap("k", "d", None))
    assert seen == sorted(set(seen))
    assert seen[-1] > seen[-2] + 1  # the clear bumped the version too


_Setup = str  # "absent" | "live" | "deleted" | "cleared"


async def _prepare(l3: L3Tier, setup: _Setup) -> tuple[dict[str, int | None], int]:
    """Bring key 'k' into the named state; return the versions a caller could hold, and the
    highest version the key has had so far (0 if never written)."""
    if setup == "absent":
        return {"none": None, "one": 1}, 0
    first = await l3.write("k", "first")
    current = await l3.write("k", "current")
    if setup == "live":
        return {"none": None, "current": current, "stale": first, "future": current + 1}, current
    if setup == "deleted":
        assert await l3.delete("k")
    else:
        await l3.clear()
    return {"none": None, "last_live": current, "tombstone": current + 1}, current + 1


@pytest.mark.parametrize(
    ("setup", "expected_name", "succeeds", "actual_name"),
    [
        ("absent", "none", True, None),
        ("absent", "one", False, "none"),
        ("live", "current", True, None),
        ("live", "stale", False, "current"),
        ("live", "future", False, "current"),
        ("live", "none", False, "current"),
        ("deleted", "none", True, None),
        ("deleted", "last_live", False, "none"),
        ("deleted", "tombstone", False, "none"),
        ("cleared", "none", True, None),
        ("cleared", "last_live", False, "none"),
    ],
)
async def test_compare_and_swap_semantics(
    l3: L3Tier, setup: _Setup, expected_name: str, succeeds: bool, actual_name: str | None
) -> None:
    """CAS succeeds exactly for (absent or deleted, None) and (live at n, n); else nothing moves."""
    versions, highest = await _prepare(l3, setup)
    expected = versions[expected_name]
    before = await l3.read("k")
    if succeeds:
        new_version = await l3.compare_and_swap("k", "swapped", expected)
        assert TierEntry("swapped", new_version) == await l3.read("k")
        assert new_version == highest + 1
    else:
        with pytest.raises(VersionConflict) as caught:
            await l3.compare_and_swap("k", "swapped", expected)
        assert caught.value.key == "k"
        assert caught.value.expected == expected
        assert caught.value.actual == (None if actual_name is None else versions[actual_name])
        assert before == await l3.read("k")


async def test_stale_compare_and_swap_after_delete_and_recreate_fails(l3: L3Tier) -> None:
    """ABA: a version read before a delete and re-create never matches the re-created key."""
    read_version = await l3.write("aba", "A")
    await l3.delete("aba")
    await l3.write("aba", "A again")
    with pytest.raises(VersionConflict):
        await l3.compare_and_swap("aba", "B", read_version)
    assert await l3.get("aba") == "A again"


@pytest.mark.parametrize("expected", ["1", 1.0, True, 0, -1, 2**63, 2**64])
async def test_compare_and_swap_refuses_a_non_int_version(l3: L3Tier, expected: object) -> None:
    """A version that is not an int in 1..2**63-1 (or None) is API misuse, raised before any
    I/O (versions start at 1; the home's column is a bigint)."""
    await l3.write("k", 1)
    with pytest.raises(InvalidValueError, match="expected_version"):
        await l3.compare_and_swap("k", 2, expected)  # type: ignore[arg-type]  # deliberately bad
    assert await l3.get("k") == 1


async def test_delete_reports_presence_and_tombstones_the_key(
    l3: L3Tier, raw_postgres: asyncpg.Connection, pg_schema: str, namespace: str
) -> None:
    """delete() is True once, then False; the row stays as a tombstone with a bumped version."""
    await l3.write("d", {"x": 1})
    assert await l3.delete("d")
    assert not await l3.delete("d")
    assert not await l3.delete("never")
    assert await l3.read("d") is None
    assert await _rows(raw_postgres, pg_schema) == [(namespace, "d", None, 2, True)]


async def test_delete_if_version_deletes_only_the_expected_version(l3: L3Tier) -> None:
    """delete_if_version(n) deletes a key live at n and raises VersionConflict otherwise."""
    version = await l3.write("c", 1)
    with pytest.raises(VersionConflict) as caught:
        await l3.delete_if_version("c", version + 1)
    assert caught.value.actual == version
    tombstone = await l3.delete_if_version("c", version)
    assert tombstone == version + 1
    with pytest.raises(VersionConflict) as caught:
        await l3.delete_if_version("c", version)
    assert caught.value.actual is None


async def test_fill_installs_only_where_the_key_is_not_live(l3: L3Tier) -> None:
    """fill() keeps a live entry, installs an absent one at its version, revives tombstones."""
    await l3.fill("absent", TierEntry("promoted", 7))
    assert TierEntry("promoted", 7) == await l3.read("absent")
    live_version = await l3.write("live", "home")
    await l3.fill("live", TierEntry("older copy", 99))
    assert TierEntry("home", live_version) == await l3.read("live")
    for _ in range(5):
        await l3.write("gone", "x")
    await l3.delete("gone")  # tombstone at version 6
    await l3.fill("gone", TierEntry("revived", 2))
    assert TierEntry("revived", 7) == await l3.read("gone")
    await l3.fill("unversioned", TierEntry([1], None))
    assert TierEntry([1], 1) == await l3.read("unversioned")


async def test_clear_of_one_namespace_leaves_a_prefix_sharing_namespace_alone(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """Clearing 'ns' leaves 'ns-b' in the same schema intact."""
    async with (
        L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema) as first,
        L3Tier(postgres_dsn, namespace=f"{namespace}-b", schema=pg_schema) as second,
    ):
        for key in ("k", "b:k"):
            await first.set(key, f"first {key}")
            await second.set(key, f"second {key}")
        await first.clear()
        for key in ("k", "b:k"):
            assert await first.read(key) is None
            assert await second.get(key) == f"second {key}"


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("", 1, InvalidKeyError),
        ("bad\nkey", 1, InvalidKeyError),
        (None, 1, InvalidKeyError),
        ("k", (1, 2), InvalidValueError),
        ("k", {1: "int key"}, InvalidValueError),
        ("k", float("inf"), InvalidValueError),
        ("k", "nul \x00 inside", InvalidValueError),
        ("k", "x" * 100, ValueTooLargeError),
    ],
)
async def test_invalid_keys_and_values_raise_typed_errors_and_touch_nothing(
    postgres_dsn: str,
    namespace: str,
    pg_schema: str,
    raw_postgres: asyncpg.Connection,
    key: object,
    value: object,
    error: type[Exception],
) -> None:
    """Bad input raises its typed error before any I/O, through every writing method."""
    async with L3Tier(
        postgres_dsn, namespace=namespace, schema=pg_schema, value_size_max_bytes=64
    ) as tier:
        await tier.set("k", "before")
        before = await _rows(raw_postgres, pg_schema)
        with pytest.raises(error):
            await tier.set(key, value)  # type: ignore[arg-type]  # deliberately invalid
        with pytest.raises(error):
            await tier.compare_and_swap(key, value, 1)  # type: ignore[arg-type]  # invalid
        with pytest.raises(error):
            await tier.compare_and_swap(key, value, None)  # type: ignore[arg-type]  # invalid
        with pytest.raises(error):
            await tier.fill(key, TierEntry(value, 1))  # type: ignore[arg-type,arg-type]  # invalid
        assert await _rows(raw_postgres, pg_schema) == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"namespace": "a:b"},
        {"schema": "bad-schema"},
        {"schema": 'x"; DROP TABLE y; --'},
        {"schema": "1starts_with_digit"},
        {"value_size_max_bytes": -1},
        {"pool_size_max": 0},
        {"connect_timeout_s": float("nan")},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object]) -> None:
    """Malformed settings (including a schema that is not a plain identifier) are refused."""
    with pytest.raises(ConfigurationError):
        L3Tier("postgresql://localhost/db", **kwargs)  # type: ignore[arg-type]  # invalid


async def test_use_before_connect_and_after_aclose_raises_closed_resource_error(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """An unconnected tier says to call connect(); aclose() is idempotent; reconnect works."""
    tier = L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema)
    with pytest.raises(ClosedResourceError, match=r"connect\(\)"):
        await tier.read("k")
    await tier.connect()
    await tier.connect()
    await tier.set("k", 1)
    await tier.aclose()
    await tier.aclose()
    with pytest.raises(ClosedResourceError, match=r"connect\(\)"):
        await tier.compare_and_swap("k", 2, 1)
    await tier.connect()
    assert TierEntry(1, 1) == await tier.read("k")
    await tier.aclose()


async def test_dsn_none_uses_the_configured_server(
    postgres_dsn: str, namespace: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a DSN the tier takes SAGEMEM_POSTGRES_DSN and sees what an explicit DSN wrote."""
    monkeypatch.setenv("SAGEMEM_POSTGRES_DSN", postgres_dsn)
    async with (
        L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema) as explicit,
        L3Tier(namespace=namespace, schema=pg_schema) as configured,
    ):
        version = await explicit.set("shared", "seen")
        assert TierEntry("seen", version) == await configured.read("shared")


async def test_many_tiers_connecting_at_once_create_the_table_once(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """Eight tiers connecting concurrently to a fresh schema all succeed and share the table."""
    tiers = [
        L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema, pool_size_max=1)
        for _ in range(8)
    ]
    try:
        await asyncio.gather(*(tier.connect() for tier in tiers))
        await tiers[0].set("shared", 1)
        assert [await tier.get("shared") for tier in tiers] == [1] * 8
    finally:
        for tier in tiers:
            await tier.aclose()


async def test_unreachable_server_raises_tier_unavailable_with_the_cause(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """connect() to a socket directory with no server raises TierUnavailable with the cause."""
    empty_dir = tmp_path_factory.mktemp("no-postgres")
    tier = L3Tier(f"postgresql://postgres@/postgres?host={empty_dir}", connect_timeout_s=2.0)
    with pytest.raises(TierUnavailable) as caught:
        await tier.connect()
    assert caught.value.tier == "L3"
    assert isinstance(caught.value.__cause__, (OSError, asyncpg.PostgresError))
    with pytest.raises(ClosedResourceError):
        await tier.read("k")


async def test_server_errors_during_commands_are_wrapped(
    l3: L3Tier, raw_postgres: asyncpg.Connection, pg_schema: str
) -> None:
    """A table dropped behind the tier's back surfaces as TierUnavailable with the asyncpg cause."""
    await l3.set("k", 1)
    await raw_postgres.execute(f'DROP TABLE "{pg_schema}".l3_entries')
    with pytest.raises(TierUnavailable) as caught:
        await l3.read("k")
    assert isinstance(caught.value.__cause__, asyncpg.PostgresError)
    assert "'k'" in str(caught.value)


async def test_a_command_blocked_past_its_timeout_raises_tier_unavailable(
    postgres_dsn: str, namespace: str, pg_schema: str, raw_postgres: asyncpg.Connection
) -> None:
    """A write blocked on a row lock past command_timeout_s fails and is rolled back."""
    async with L3Tier(
        postgres_dsn, namespace=namespace, schema=pg_schema, command_timeout_s=0.2
    ) as tier:
        await tier.set("locked", 1)
        async with raw_postgres.transaction():
            await raw_postgres.execute(
                f'SELECT 1 FROM "{pg_schema}".l3_entries WHERE namespace = $1 AND key = $2 '
                "FOR UPDATE",
                namespace,
                "locked",
            )
            with pytest.raises(TierUnavailable) as caught:
                await tier.set("locked", 2)
            assert isinstance(caught.value.__cause__, asyncpg.LockNotAvailableError)
        # The lock is released now: the aborted write must not have been applied later.
        assert TierEntry(1, 1) == await tier.read("locked")
        assert await tier.set("locked", 3) == 2


async def test_connections_dropped_by_the_server_are_replaced(
    l3: L3Tier, raw_postgres: asyncpg.Connection, pg_schema: str
) -> None:
    """After the server kills the tier's connections, at most one call fails, wrapped."""
    await l3.set("k", 1)
    terminated = await raw_postgres.fetchval(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND query LIKE $1",
        f'%"{pg_schema}"%',
    )
    assert terminated >= 1
    outcomes: list[JSONValue | TierUnavailable] = []
    for _ in range(2):
        try:
            outcomes.append(await l3.get("k"))
        except TierUnavailable as error:
            outcomes.append(error)
    assert outcomes[-1] == 1
    assert sum(isinstance(outcome, TierUnavailable) for outcome in outcomes) <= 1


class _FakeConnection:
    """Just enough of asyncpg.Connection for the pool's bookkeeping."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False
        self.in_transaction = False
        self.terminated = asyncio.Event()

    async def hang_until_terminated(self) -> None:
        """A statement that never answers: it fails only when the connection is dropped."""
        await self.terminated.wait()
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")

    def is_closed(self) -> bool:
        return self.closed

    def is_in_transaction(self) -> bool:
        return self.in_transaction

    def terminate(self) -> None:
        self.closed = True
        self.terminated.set()

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109  # asyncpg's signature
        self.closed = True


def _fake_pool(
    size_max: int, acquire_timeout_s: float = 5.0, lease_time_max_s: float = 60.0
) -> tuple[ConnectionPool, list[int]]:
    opened: list[int] = []

    async def open_connection() -> asyncpg.Connection:
        opened.append(len(opened))
        return _FakeConnection(len(opened) - 1)  # type: ignore[return-value]  # a fake

    pool = ConnectionPool(
        open_connection,
        size_max=size_max,
        acquire_timeout_s=acquire_timeout_s,
        lease_time_max_s=lease_time_max_s,
    )
    return pool, opened


async def test_pool_reuses_healthy_connections_and_replaces_broken_ones() -> None:
    """A connection returned healthy is lent again; one returned after a non-server error is not."""
    pool, opened = _fake_pool(size_max=2)
    async with pool.lease() as first:
        pass
    async with pool.lease() as again:
        assert again is first
    with pytest.raises(TimeoutError):
        async with pool.lease() as broken:
            raise TimeoutError
    assert broken.is_closed()
    async with pool.lease() as fresh:
        assert fresh is not broken
    assert opened == [0, 1]


async def test_pool_lends_at_most_size_max_and_bounds_the_wait() -> None:
    """With every connection lent, a further lease waits at most acquire_timeout_s."""
    pool, opened = _fake_pool(size_max=1, acquire_timeout_s=0.05)
    async with pool.lease():
        with pytest.raises(TimeoutError):
            async with pool.lease():
                pass
    async with pool.lease():
        pass
    assert opened == [0]


async def test_closed_pool_refuses_leases_and_closes_returned_connections() -> None:
    """close() closes idle connections; a lent one is terminated when it comes back."""
    pool, _ = _fake_pool(size_max=2)
    async with pool.lease() as lent:
        async with pool.lease() as idle:
            pass
        await pool.close(1.0)
        assert idle.is_closed()
        assert not lent.is_closed()
    assert lent.is_closed()
    with pytest.raises(asyncpg.InterfaceError):
        async with pool.lease():
            pass


async def test_pool_watchdog_ends_a_statement_that_never_answers() -> None:
    """A lease older than lease_time_max_s has its connection dropped and raises LeaseExpired."""
    pool, opened = _fake_pool(size_max=1, lease_time_max_s=0.1)
    pool.start()
    try:
        async with asyncio.timeout(10):
            with pytest.raises(LeaseExpired) as caught:
                async with pool.lease() as connection:
                    await connection.hang_until_terminated()  # type: ignore[attr-defined]  # fake
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value.__cause__, asyncpg.ConnectionDoesNotExistError)
        async with pool.lease() as fresh:
            assert fresh is not connection
        assert opened == [0, 1]
    finally:
        await pool.close(1.0)
