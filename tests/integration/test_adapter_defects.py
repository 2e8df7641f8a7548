"""Regression tests for the defects of issue 12, each tried as a user would: through
`sagemem.connect(namespace=..., agent_id=...)` on the real servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

import sagemem
from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.home import CommitAnswer, HomeStore
from sagemem.errors import (
    ConfigurationError,
    InvalidKeyError,
    InvalidValueError,
    OutcomeUnknown,
    TierUnavailable,
    VersionConflict,
)
from sagemem.hierarchy import MemoryHierarchy
from sagemem.redis_topology import namespace_node_url
from sagemem.scope import AgentCapability, ScopedHierarchy
from sagemem.spec.vocabulary import Guard, L1State
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue
from tests.integration.polling import poll_until, wait_until

VERSION_MAX = 2**63 - 1  # the home's bigint version column

pytestmark = pytest.mark.integration

# Short enough that a hang shows as a failure, long enough for a loaded CI machine.
_BOUND_S = 10.0


def _agent(namespace: str, agent_id: str, **kwargs: object) -> sagemem.connection._Connection:
    return sagemem.connect(namespace=namespace, agent_id=agent_id, **kwargs)  # type: ignore[arg-type]


async def test_swap_of_a_never_written_key_is_a_conflict_not_a_hang(namespace: str) -> None:
    """compare_and_swap expecting a version of a key never written raises VersionConflict
    (expected=1, actual=None) at once and stores nothing."""
    async with _agent(namespace, "a") as memory:
        async with asyncio.timeout(_BOUND_S):
            with pytest.raises(VersionConflict) as raised:
                await memory.compare_and_swap("never-written", "v", 1)
        assert (raised.value.expected, raised.value.actual) == (1, None)
        assert await memory.get("never-written") is None
        assert memory.tiers[0].statistics().io_retries == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["coherent", "strict"])
async def test_swap_of_a_deleted_key_expecting_a_version_is_a_conflict(
    namespace: str, mode: str
) -> None:
    """A key written then deleted is absent: a swap expecting its old version is refused with
    actual=None, and a swap expecting absence succeeds."""
    async with _agent(namespace, "a", mode=mode) as memory:
        version = await memory.set("k", "one", tier_index=2)
        assert version is not None
        assert await memory.delete("k") is True
        async with asyncio.timeout(_BOUND_S):
            with pytest.raises(VersionConflict) as raised:
                await memory.compare_and_swap("k", "two", version)
            assert raised.value.actual is None
            await memory.compare_and_swap("k", "three", None)
        assert await memory.get("k") == "three"


@pytest.mark.parametrize("bad", [2**63, 2**64, 0, -1, True, 1.0, "1"])
async def test_swap_refuses_versions_outside_the_home_range(namespace: str, bad: object) -> None:
    """expected_version outside 1..2**63-1 (or not an int) raises InvalidValueError before any
    I/O, in a coherent and in a plain hierarchy, and nothing is stored."""
    async with (
        _agent(namespace, "a") as coherent,
        sagemem.connect(namespace=namespace) as plain,
    ):
        for memory in (coherent, plain):
            with pytest.raises(InvalidValueError, match="expected_version"):
                await memory.compare_and_swap("k", 2, bad)  # type: ignore[arg-type]
        assert await coherent.get("k") is None
        assert await plain.get("k") is None


async def test_swap_at_the_largest_version_is_a_plain_conflict(namespace: str) -> None:
    """The largest valid version is accepted as input and answered with a conflict."""
    async with _agent(namespace, "a") as memory:
        await memory.set("k", 1, tier_index=2)
        with pytest.raises(VersionConflict):
            await memory.compare_and_swap("k", 2, VERSION_MAX)
        assert await memory.get("k") == 1


async def test_a_plain_hierarchy_entry_in_the_protocol_l2_is_a_miss(namespace: str) -> None:
    """A version-less L2 entry written by a plain hierarchy in the same namespace is read as an
    L2 miss by a coherent agent (it reads the home), never a spin."""
    plain = MemoryHierarchy([L1Tier(), L2Tier(namespace=namespace), L3Tier(namespace=namespace)])
    await plain.connect()
    try:
        await plain.set("k", "home value", tier_index=2)
        await plain.tiers[1].write("k", "plain l2 value")  # no version
        async with _agent(namespace, "a") as memory:
            async with asyncio.timeout(_BOUND_S):
                assert await memory.get("k") == "home value"
            assert memory.tiers[0].statistics().io_retries == 0  # type: ignore[attr-defined]
    finally:
        await plain.aclose()
        for tier in plain.tiers:
            await tier.aclose()


async def test_a_foreign_l2_entry_in_the_protocol_space_is_a_miss(
    namespace: str, redis_url: str
) -> None:
    """Bytes in the protocol's L2 key that sagemem did not write are a miss, not a spin."""
    async with _agent(namespace, "a") as memory:
        await memory.set("k", "home value", tier_index=2)
        raw = aioredis.from_url(await namespace_node_url(redis_url, namespace))
        try:
            await raw.set(f"sagemem:{{{namespace}}}:k", b"\xff not sagemem")
        finally:
            await raw.aclose()
        coherent = memory.tiers[0]
        assert isinstance(coherent, CoherentL1Tier)
        await coherent.evict("k")
        async with asyncio.timeout(_BOUND_S):
            assert await memory.get("k") == "home value"


async def test_leaving_the_block_after_a_tier0_write_stores_the_value_promptly(
    namespace: str,
) -> None:
    """`async with connect(agent_id=...)`, a tier-0 write, and leaving the block: the value is
    at the home afterwards and the exit does not wait for a timeout."""
    loop = asyncio.get_running_loop()
    async with _agent(namespace, "a") as memory:
        await memory.set("plan", "ship it", tier_index=0)
        started = loop.time()
    elapsed = loop.time() - started
    async with sagemem.connect(namespace=namespace) as plain:
        assert await plain.get("plan") == "ship it"
    assert elapsed < _BOUND_S, f"closing took {elapsed:.1f} s"


@pytest.mark.parametrize("key", ["a\x9bb", "\x85", "x\x80", "\x9f", "tab\tkey", "\x7f"])
async def test_keys_with_any_control_character_are_refused(namespace: str, key: str) -> None:
    """Keys with C0, DEL or C1 control characters raise InvalidKeyError before any I/O."""
    async with _agent(namespace, "a") as memory:
        with pytest.raises(InvalidKeyError):
            await memory.set(key, 1, tier_index=2)
        with pytest.raises(InvalidKeyError):
            await memory.get(key)


async def test_keys_with_printable_unicode_are_kept(namespace: str) -> None:
    """Non-control characters (no-break space, emoji, accents) are valid keys."""
    async with _agent(namespace, "a") as memory:
        for key in ("a\xa0b", "é\u2028x", "🙂"):
            await memory.set(key, key, tier_index=2)
            assert await memory.get(key) == key


async def test_a_namespace_that_names_another_namespaces_scratch_space_is_refused() -> None:
    """`<ns>.l2` is `<ns>`'s L2-labelled space: connect, L3, the bus and grants refuse it."""
    from sagemem.grants import redis_username

    with pytest.raises(ConfigurationError, match=r"\.l2"):
        sagemem.connect(namespace="team.l2")
    with pytest.raises(ConfigurationError, match=r"\.l2"):
        L3Tier(namespace="team.l2")
    with pytest.raises(ConfigurationError, match=r"\.l2"):
        CoherenceBus(namespace="team.l2")
    with pytest.raises(ConfigurationError, match=r"\.l2"):
        redis_username(agent_id="agent", namespace="team.l2")
    assert L2Tier(namespace="team.l2").namespace == "team.l2"  # the derived space itself


# -- commits: conditions kept, outcomes learned, never applied twice ---------------------------


@contextlib.asynccontextmanager
async def _l1(
    agent_id: str,
    namespace: str,
    *,
    operation_timeout_s: float = _BOUND_S,
    command_timeout_s: float = 5.0,
    home_steps: type[HomeStore] = HomeStore,
) -> AsyncIterator[CoherentL1Tier]:
    """One agent with its own bus and home pool, as a separate process would have it."""
    home = L3Tier(namespace=namespace, command_timeout_s=command_timeout_s)
    bus = CoherenceBus(namespace=namespace)
    l1 = CoherentL1Tier(
        agent_id, bus, home=home, operation_timeout_s=operation_timeout_s, home_steps=home_steps
    )
    await bus.connect()
    try:
        await l1.start()
        try:
            yield l1
        finally:
            await l1.aclose()
            await home.aclose()
    finally:
        await bus.aclose()


class _LosesFirstReply(HomeStore):
    """The home's statements, except that the reply of the first commit is lost after the
    commit took effect (the connection dropped after COMMIT)."""

    lost = 0

    async def commit(self, key: str, value: JSONValue, me: str, operation_id: str) -> CommitAnswer:
        answer = await super().commit(key, value, me, operation_id)
        return self._lose(answer)

    async def commit_if(
        self, key: str, value: JSONValue, me: str, expected: int | None, operation_id: str
    ) -> CommitAnswer:
        answer = await super().commit_if(key, value, me, expected, operation_id)
        return self._lose(answer)

    def _lose(self, answer: CommitAnswer) -> CommitAnswer:
        if type(self).lost == 0 and answer.branch is Guard.NOT_OWNED_BY_OTHER:
            type(self).lost += 1
            raise TierUnavailable("the connection dropped after COMMIT (injected)", tier="L3")
        return answer


@contextlib.asynccontextmanager
async def _home_locked(postgres_dsn: str, agent: CoherentL1Tier) -> AsyncIterator[None]:
    """The agent's home table locked by another transaction (every statement waits, then fails
    after the agent's lock timeout) for the duration of the block."""
    home = agent.home_tier
    assert home is not None
    locker = await asyncpg.connect(postgres_dsn, timeout=_BOUND_S)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute(f"LOCK TABLE {home.table} IN ACCESS EXCLUSIVE MODE")
        yield
        await transaction.rollback()
    finally:
        await locker.close(timeout=_BOUND_S)


async def _home_row(namespace: str, key: str) -> TierEntry | None:
    probe = L3Tier(namespace=namespace)
    await probe.connect()
    try:
        return await probe.read(key)
    finally:
        await probe.aclose()


@pytest.mark.parametrize("mode", ["swap", "update", "write_through"])
async def test_a_commit_whose_reply_was_lost_is_answered_with_its_outcome(
    namespace: str, mode: str
) -> None:
    """A commit that took effect but whose reply was lost is retried with the same operation
    id: the caller gets the committed version (not a VersionConflict), the value is committed
    once, and the other agents' copies are invalidated."""

    class Lossy(_LosesFirstReply):
        lost = 0

    async with _l1("reader", namespace) as reader, _l1("w", namespace, home_steps=Lossy) as w:
        first = await reader.write_through("k", 1)
        assert await reader.read("k") == TierEntry(1, first)  # a copy to invalidate
        async with asyncio.timeout(_BOUND_S):
            if mode == "swap":
                version = await w.compare_and_swap("k", 2, first)
            elif mode == "update":
                version = await w.update("k", lambda n: n + 1)  # type: ignore[operator]
            else:
                version = await w.write_through("k", 2)
        assert Lossy.lost == 1
        assert version == first + 1  # committed once: no second version
        assert await _home_row(namespace, "k") == TierEntry(2, version)
        await wait_until(lambda: reader.get_state("k") is not L1State.S, "the invalidation")
        assert await reader.read("k") == TierEntry(2, version)


async def test_a_timed_out_swap_keeps_its_version_check_when_another_operation_starts(
    namespace: str, postgres_dsn: str
) -> None:
    """A compare-and-swap that times out while the home is locked is retried in the background;
    a plain read started meanwhile must not turn it into an unconditional commit: the stale
    swap is refused and the newer value stays."""
    async with (
        _l1("w", namespace) as writer,
        _l1("cas", namespace, operation_timeout_s=1.0, command_timeout_s=0.2) as impatient,
    ):
        stale = await writer.write_through("k", "v1")
        newest = await writer.write_through("k", "v2")
        async with _home_locked(postgres_dsn, impatient):
            with pytest.raises(OutcomeUnknown) as raised:
                await impatient.compare_and_swap("k", "stale swap", stale)
            assert raised.value.key == "k"
            reading = asyncio.create_task(impatient.get("k"))  # a new operation on the key
            retries = impatient.statistics().io_retries
            await wait_until(  # the swap's commit is retried after the read began (refused)
                lambda: impatient.statistics().io_retries > retries, "a retried commit", 10.0
            )
        async with asyncio.timeout(_BOUND_S):
            assert await reading == "v2"
        assert await _home_row(namespace, "k") == TierEntry("v2", newest)
        assert await writer.read("k") == TierEntry("v2", newest)


async def test_a_scoped_view_over_a_coherent_hierarchy_sees_other_agents_writes(
    namespace: str,
) -> None:
    """A ScopedHierarchy over a coherent hierarchy reads L3 values through the coherent L1 only:
    after another agent's write-through returns, the scoped view reads the new value (it was
    kept in the view's private, never-invalidated L1 for ever)."""
    capability = AgentCapability(tiers={0, 1, 2}, l3_read=True, l3_write=False)
    async with _agent(namespace, "writer") as writer, _agent(namespace, "reader") as hierarchy:
        scoped = ScopedHierarchy(hierarchy, capability, agent_id="reader")
        async with scoped:
            await writer.set("belief", "old", tier_index=2)
            assert await scoped.get("belief") == "old"
            assert await scoped.get("belief") == "old"  # a second read: cached somewhere
            await writer.set("belief", "new", tier_index=2)

            async def sees_new() -> bool:
                return await scoped.get("belief") == "new"

            await poll_until(sees_new, "the scoped view to read the new value", timeout_s=5.0)


# -- a version names exactly one value ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["coherent", "strict"])
async def test_each_local_write_of_an_owner_gets_its_own_version(namespace: str, mode: str) -> None:
    """Successive tier-0 writes by the owner name different versions, so a swap expecting the
    first write's version is refused and the later value is not lost."""
    async with _agent(namespace, "a", mode=mode) as memory:
        first = await memory.set("k", 1, tier_index=0)
        second = await memory.set("k", 100, tier_index=0)
        assert first is not None
        assert second is not None
        assert second > first
        with pytest.raises(VersionConflict) as raised:
            await memory.compare_and_swap("k", 2, first)
        assert raised.value.actual == second
        assert await memory.get("k") == 100
        assert await memory.compare_and_swap("k", 2, second) > second
        assert await memory.get("k") == 2


async def test_an_owners_version_is_not_reused_after_its_grant_is_revoked(namespace: str) -> None:
    """An owner that acknowledged a tier-0 write and died (nothing written back): once its grant
    is revoked, the value the home kept is read under a new version, never the dead owner's."""
    async with _l1("survivor", namespace) as survivor:
        await survivor.write_through("k", "kept")
        home = L3Tier(namespace=namespace)
        bus = CoherenceBus(namespace=namespace)
        owner = CoherentL1Tier("owner", bus, home=home, owner_lease_s=0.3)
        await bus.connect()
        await owner.start()
        try:
            lost_version = await owner.set("k", "lost with the owner")
            await owner.abandon()  # a crash: nothing is written back
        finally:
            await home.aclose()
            await bus.aclose()
        async with asyncio.timeout(_BOUND_S):
            entry = await survivor.read("k")  # recalls, then revokes the lapsed grant
        assert entry is not None
        assert entry.value == "kept"
        assert lost_version is not None
        assert entry.version is not None
        assert entry.version > lost_version


async def test_an_owners_delete_of_its_unsaved_value_says_the_key_held_a_value(
    namespace: str,
) -> None:
    """An owner deletes the value it wrote at tier 0 and never wrote back: the delete reports
    that the key held a value (the owner's copy is the key's value; the home's row is older),
    found by the strict linearizability test with tier-0 writes."""
    async with _l1("a", namespace) as owner:
        await owner.set("k", "unsaved")
        assert await owner.delete("k") is True
        assert await owner.read("k") is None
        assert await owner.delete("k") is False


async def test_a_failing_step_nobody_waits_for_is_parked_then_resumed(
    namespace: str, postgres_dsn: str
) -> None:
    """A swap whose commit keeps failing (the home locked) raises to its caller; once nobody
    waits, the driver parks instead of retrying for ever; the next operation on the key resumes
    the same commit, which keeps its version check."""
    async with (
        _l1("w", namespace) as writer,
        _l1("cas", namespace, operation_timeout_s=0.5, command_timeout_s=0.1) as impatient,
    ):
        first = await writer.write_through("k", "v1")
        await writer.write_through("k", "v2")
        async with _home_locked(postgres_dsn, impatient):
            with pytest.raises(OutcomeUnknown):
                await impatient.compare_and_swap("k", "stale", first)
            await wait_until(
                lambda: impatient.statistics().parked_keys == 1, "the driver to park", 10.0
            )
            retries = impatient.statistics().io_retries
            await asyncio.sleep(1.0)  # parked: nothing retries meanwhile
            assert impatient.statistics().io_retries == retries
        async with asyncio.timeout(_BOUND_S):
            assert await impatient.get("k") == "v2"  # resumes the swap, which is refused
        assert impatient.statistics().parked_keys == 0
        assert await _home_row(namespace, "k") == TierEntry("v2", first + 1)
