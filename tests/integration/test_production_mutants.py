"""Production mutation test: the servers' side executes the table's shared rows, so a broken
shared row breaks production where the real-server tests see it.

The shared-actor rows production executes (OUTBOX_RELAY, HOME_EXPIRE_OWNER, HOLDER_EXPIRE) are
mutated the ways a hand edit could break them: the row deleted, each effect dropped, adjacent
effects swapped, PUBLISH_INVALIDATIONS and its strict form substituted for each other; and the
FILL_FETCH rows lose DIRECTORY_ADD_HOLDER (the fill script registers where the rows say); the
agent rows naming a home statement (commit, grant, write-back, flush) lose it, and the two
store statements are substituted for each other (the driver runs the statement the row names). Each
mutant is first put to the model's explorer (2 agents / 1 write / 1 fault, then 3/1/1 and
2/2/1). Every mutant the model rejects must make a short real-server scenario fail when the
agents run with the mutated table (`CoherentL1Tier(definition=...)`); the unmutated table must
pass it. The scenario, on distinct keys at once:

- a write-through returns (bounded), its holders' copies (one filled from the home, one from
  L2) are invalidated, a fresh reader gets the
  new value (L2 was deleted), and a coherent namespace never owes acknowledgements;
- a crashed owner's lapsed grant is expired, so another writer gets through;
- a tier-0 write is read back through a recall (and the grant is released), through an
  eviction's write-back, and a flush stores the value and keeps the grant;
- strict: a crashed holder's registration lapses, so a strict writer settles;
- a writer whose Redis steps fail after its commit leaves the outbox for a sweeper, so the
  holder is still invalidated;
- strict: while a holder's bus deliveries are held back, the writer does not return while the
  holder still serves the old value.

Mutants the model does not reject at those bounds (equivalent, e.g. the order of the two
effects one Redis script performs atomically) are listed in the report, not asserted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import pytest

from proofs.explore import explore
from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.directory import NO_VALUE, NoValue, RedisDirectory
from sagemem.coherence.home import HomeStore
from sagemem.coherence.messages import BusEvent
from sagemem.coherence.steps import ServerSteps
from sagemem.errors import SageMemError, TierUnavailable
from sagemem.spec import TABLE
from sagemem.spec.model import ProtocolDefinition
from sagemem.spec.table import Rule
from sagemem.spec.vocabulary import Effect, Event, L1State, Mode
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue

HOME_STATEMENTS = frozenset(
    {
        Effect.HOME_COMMIT_VERSION,
        Effect.HOME_RESERVE_AND_GRANT,
        Effect.HOME_STORE_AND_RELEASE,
        Effect.HOME_STORE_KEEP_GRANT,
    }
)
PRODUCTION_SHARED_EVENTS = frozenset(
    {
        Event.OUTBOX_RELAY,
        Event.OUTBOX_RELAY_UPDATE,
        Event.OUTBOX_RELAY_STORE,
        Event.HOME_EXPIRE_OWNER,
        Event.HOLDER_EXPIRE,
    }
)
BOUNDS = ((2, 1, 1), (3, 1, 1))
CONCURRENT_SCENARIOS = 6
OPERATION_TIMEOUT_S = 4.0
OWNER_LEASE_S = 0.6
SHORT_HOLDER_TTL_S = 1.0
SWEEP_AFTER_S = 0.5
INVALIDATED_WITHIN_S = 3.0
HELD_BACK_S = 2.0


@dataclass(frozen=True)
class TableMutant:
    """One edit of a shared row, in one mode."""

    name: str
    mode: Mode
    table: tuple[Rule, ...]
    write_update: bool = False  # the model offers the write-update relay (its rows' mutants)


def _mutants() -> Iterator[TableMutant]:
    swaps = {
        Effect.PUBLISH_INVALIDATIONS: Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS,
        Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS: Effect.PUBLISH_INVALIDATIONS,
    }
    stores = {
        Effect.HOME_STORE_AND_RELEASE: Effect.HOME_STORE_KEEP_GRANT,
        Effect.HOME_STORE_KEEP_GRANT: Effect.HOME_STORE_AND_RELEASE,
    }
    for index, rule in enumerate(TABLE):
        statements = [e for e in rule.effects if e in HOME_STATEMENTS]
        if isinstance(rule.source, L1State) and statements:
            # the driver runs the home statement the entry's row names, and only that one
            where = f"row{index}-{rule.source.name}-{rule.event.name}-{rule.guard.value}"
            effect = statements[0]
            variants = [(f"drop-{effect.name}", tuple(e for e in rule.effects if e is not effect))]
            if effect in stores:
                variants.append(
                    (
                        f"subst-{stores[effect].name}",
                        tuple(stores[effect] if e is effect else e for e in rule.effects),
                    )
                )
            for mode in sorted(rule.modes, key=lambda m: m.value):
                for what, effects in variants:
                    yield TableMutant(
                        f"{where}-{mode.value}-{what}",
                        mode,
                        tuple(
                            dataclasses.replace(r, effects=effects) if n == index else r
                            for n, r in enumerate(TABLE)
                        ),
                    )
        if rule.event is Event.FILL_FETCH and Effect.DIRECTORY_ADD_HOLDER in rule.effects:
            # the fill script registers the agent only where the entry's row says so
            dropped = tuple(e for e in rule.effects if e is not Effect.DIRECTORY_ADD_HOLDER)
            for mode in sorted(rule.modes, key=lambda m: m.value):
                yield TableMutant(
                    f"row{index}-{rule.source.name}-FILL_FETCH-{rule.guard.value}-{mode.value}"
                    "-drop-DIRECTORY_ADD_HOLDER",
                    mode,
                    tuple(
                        dataclasses.replace(r, effects=dropped) if n == index else r
                        for n, r in enumerate(TABLE)
                    ),
                )
        if rule.event not in PRODUCTION_SHARED_EVENTS:
            continue

        def with_effects(effects: tuple[Effect, ...], i: int = index) -> tuple[Rule, ...]:
            return tuple(
                dataclasses.replace(r, effects=effects) if n == i else r
                for n, r in enumerate(TABLE)
            )

        # the model offers these relays only with `write_update` on
        updating = rule.event in (Event.OUTBOX_RELAY_UPDATE, Event.OUTBOX_RELAY_STORE)
        for mode in sorted(rule.modes, key=lambda m: m.value):
            where = f"row{index}-{rule.event.name}-{mode.value}"
            yield TableMutant(
                f"{where}-deleted",
                mode,
                tuple(r for n, r in enumerate(TABLE) if n != index),
                updating,
            )
            effects = rule.effects
            for j, effect in enumerate(effects):
                yield TableMutant(
                    f"{where}-drop-{effect.name}",
                    mode,
                    with_effects(effects[:j] + effects[j + 1 :]),
                    updating,
                )
            for j in range(len(effects) - 1):
                swapped = list(effects)
                swapped[j], swapped[j + 1] = swapped[j + 1], swapped[j]
                yield TableMutant(
                    f"{where}-swap-{effects[j].name}-{effects[j + 1].name}",
                    mode,
                    with_effects(tuple(swapped)),
                    updating,
                )
            for j, effect in enumerate(effects):
                if effect in swaps:
                    replaced = list(effects)
                    replaced[j] = swaps[effect]
                    yield TableMutant(
                        f"{where}-subst-{swaps[effect].name}",
                        mode,
                        with_effects(tuple(replaced)),
                        updating,
                    )


MUTANTS = tuple(_mutants())


def _model_rejects(mutant: TableMutant) -> str | None:
    """The property the explorer finds broken, or None if the mutant survives every bound."""
    for agents, writes, faults in BOUNDS:
        defn = ProtocolDefinition(
            mode=mutant.mode,
            table=mutant.table,
            agents=agents,
            writes=writes,
            fault_budget=faults,
            write_update=mutant.write_update,
        )
        report = explore(defn)
        if not report.ok:
            assert report.counterexample is not None
            return report.counterexample.property_name
    return None


# -- the scenario ----------------------------------------------------------------------------


_PUBLISHING: Final = frozenset(
    {Effect.PUBLISH_INVALIDATIONS, Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS, Effect.PUBLISH_UPDATES}
)


class _FailingRelay(ServerSteps):
    """A writer that cannot publish: every relay call that would publish invalidations fails
    (its link to Redis broke after the commit), as if it died before publishing."""

    async def relay(
        self,
        key: str,
        version: int,
        sender: str,
        effects: tuple[Effect, ...],
        *,
        holders_lapse: bool,
        value: JSONValue | NoValue = NO_VALUE,
    ) -> tuple[tuple[Effect, ...], tuple[str, ...]]:
        if _PUBLISHING & set(effects):
            raise TierUnavailable("injected: the relay's Redis call failed", tier="L2")
        return await super().relay(
            key, version, sender, effects, holders_lapse=holders_lapse, value=value
        )


def _failing_relay(home: HomeStore, directory: RedisDirectory, bus: CoherenceBus) -> ServerSteps:
    return _FailingRelay(home, directory, bus)


async def _within(seconds: float, what: str, awaitable: Awaitable[Any], problems: list[str]) -> Any:
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except (TimeoutError, SageMemError) as error:
        problems.append(f"{what}: {type(error).__name__}: {error}")
        return None


async def _poll(check: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if await check():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)


async def _seed(
    writer: CoherentL1Tier, holder: CoherentL1Tier, l2_holder: CoherentL1Tier, held: CoherentL1Tier
) -> bool:
    for key in ("k1", "k4", "k5", "k9", "k10", "k11", "k12", "k13", "k14"):
        await writer.write_through(key, "v1")
    await holder.get("k1")  # an L2 miss: the home, then L2 filled
    await l2_holder.get("k1")  # an L2 hit
    await holder.get("k4")
    await held.get("k5")
    return True


async def run_scenario(
    mode: Mode, table: tuple[Rule, ...], redis_url: str, dsn: str, schema: str
) -> list[str]:
    """Run the scenario with every agent on `table`; the problems it saw (empty: passed)."""
    namespace = f"pm{uuid.uuid4().hex[:10]}"
    definition = ProtocolDefinition(mode=mode, table=table)
    problems: list[str] = []
    home = L3Tier(dsn=dsn, namespace=namespace, schema=schema)
    bus = CoherenceBus(url=redis_url, namespace=namespace)
    held_bus = CoherenceBus(url=redis_url, namespace=namespace)
    agents: list[CoherentL1Tier] = []

    async def agent(name: str, **options: Any) -> CoherentL1Tier:
        options.setdefault("holder_ttl_s", 60.0)
        l1 = CoherentL1Tier(
            name,
            options.pop("bus", bus),
            home=home,
            mode=mode,
            definition=definition,
            owner_lease_s=OWNER_LEASE_S,
            operation_timeout_s=OPERATION_TIMEOUT_S,
            outbox_sweep_after_s=SWEEP_AFTER_S,
            **options,
        )
        agents.append(l1)
        return l1

    release = asyncio.Event()
    try:
        await home.connect()
        await bus.connect()
        await held_bus.connect()
        holder, fresh = await agent("holder"), await agent("fresh")
        # relays without the value (OUTBOX_RELAY): no value's JSON text is within 1 byte
        writer = await agent("writer", update_value_max_bytes=1)
        storer = await agent("storer")  # coherent: its relays store the value (OUTBOX_RELAY_STORE)
        sholder = await agent("sholder")  # holds k12 only
        broken_storer = (
            await agent("brokenstore", server_steps=_failing_relay)
            if mode is Mode.COHERENT
            else None
        )
        l2_holder = await agent("l2holder")
        owner, taker = await agent("owner"), await agent("taker")
        keeper, evictor = await agent("keeper"), await agent("evictor")
        flusher = await agent("flusher")
        updater = await agent("updater", write_policy="update") if mode is Mode.COHERENT else None
        uholder = await agent("uholder")  # holds k9 only: its counters are the update's
        broken_updater = (
            await agent("brokenupd", server_steps=_failing_relay, write_policy="update")
            if mode is Mode.COHERENT
            else None
        )
        crashed_holder = await agent("crashed", holder_ttl_s=SHORT_HOLDER_TTL_S)
        broken_writer = await agent(
            "broken", server_steps=_failing_relay, update_value_max_bytes=1
        )  # its relay would be OUTBOX_RELAY's
        held = await agent("held", bus=held_bus)
        held_driver = held._driver
        deliver = held_driver.on_bus

        async def held_back(event: BusEvent) -> None:
            await release.wait()
            await deliver(event)

        held_driver.on_bus = held_back  # type: ignore[method-assign]  # hold deliveries back
        for l1 in agents:
            await l1.start()
        # seed every key through the home, then let the readers hold copies
        seeded = _seed(writer, holder, l2_holder, held)
        if await _within(3 * (OPERATION_TIMEOUT_S + 1), "seeding", seeded, problems) is None:
            return problems

        async def invalidation_and_l2() -> None:
            if (
                await _within(
                    OPERATION_TIMEOUT_S + 1,
                    "a write-through",
                    writer.write_through("k1", "v2"),
                    problems,
                )
                is None
            ):
                return

            async def holder_current() -> bool:
                return await holder.get("k1") == "v2"

            if not await _poll(holder_current, INVALIDATED_WITHIN_S):
                problems.append("the holder still serves v1 after the write-through returned")

            async def l2_holder_current() -> bool:
                return await l2_holder.get("k1") == "v2"

            if not await _poll(l2_holder_current, INVALIDATED_WITHIN_S):
                problems.append(
                    "the holder that filled from L2 still serves v1 after the write-through"
                )
            if await fresh.get("k1") != "v2":
                problems.append("a fresh reader got v1 after the write-through returned (L2)")
            if mode is Mode.COHERENT:
                directory = RedisDirectory(bus.client, namespace)
                owed = await directory.pending_acks("k1")
                if owed:
                    problems.append(f"a coherent namespace owes acknowledgements: {owed}")

        async def update_to_holders() -> None:
            if updater is None:
                return  # strict mode always invalidates
            await uholder.get("k9")
            before = uholder.statistics()
            if (
                await _within(
                    OPERATION_TIMEOUT_S + 1,
                    "a write-update",
                    updater.write_through("k9", "v2"),
                    problems,
                )
                is None
            ):
                return

            async def updated() -> bool:
                return uholder.statistics().updates_received > before.updates_received

            if not await _poll(updated, INVALIDATED_WITHIN_S):
                problems.append("the holder received no update after a write-update returned")
            if await uholder.get("k9") != "v2":
                problems.append("the holder still serves v1 after a write-update returned")
            after = uholder.statistics()
            if after.invalidations_received != before.invalidations_received:
                problems.append("a write-update also invalidated the holder")
            if (after.fills_from_l2, after.fills_from_home) != (
                before.fills_from_l2,
                before.fills_from_home,
            ):
                problems.append("the holder refetched a key a write-update had sent it")
            if await fresh.get("k9") != "v2":
                problems.append("a fresh reader got v1 after a write-update returned (L2)")
            if (await HomeStore(home).outbox("k9")) is not None:
                problems.append("a write-update's outbox entry was left at the home")
            await lagging_fill(updater, "k11", "a write-update")

        async def stored_in_l2() -> None:
            if mode is not Mode.COHERENT:
                return  # strict mode's relay never stores the value
            await sholder.get("k12")
            if (
                await _within(
                    OPERATION_TIMEOUT_S + 1,
                    "a write-through that stores its value",
                    storer.write_through("k12", "v2"),
                    problems,
                )
                is None
            ):
                return

            async def holder_current() -> bool:
                return await sholder.get("k12") == "v2"

            directory = RedisDirectory(bus.client, namespace)
            if await bus.client.get(directory.l2_key("k12")) is None:
                problems.append("a storing write-through returned with nothing in L2")
            if not await _poll(holder_current, INVALIDATED_WITHIN_S):
                problems.append("the holder still serves v1 after a storing write-through returned")
            owed = await directory.pending_acks("k12")
            if owed:
                problems.append(f"a storing write-through left acknowledgements owed: {owed}")
            if await fresh.get("k12") != "v2":
                problems.append("a fresh reader got v1 after a storing write-through returned")
            if (await HomeStore(home).outbox("k12")) is not None:
                problems.append("a storing write-through's outbox entry was left at the home")
            await lagging_fill(storer, "k13", "a write-through that stores its value")

        async def lagging_fill(author: CoherentL1Tier, key: str, what: str) -> None:
            """A fill that took its L2 lease before `author`'s write-through and stores its
            older copy after the relay, once L2's copy is gone again (evicted): the relay must
            have voided the lease (L2_DELETE), whatever it stored in L2 after."""
            directory = RedisDirectory(bus.client, namespace)
            await bus.client.delete(directory.l2_key(key))
            # not registered: a strict write would wait for its acknowledgement
            lagging = await directory.fill(key, "lagger", register_on_miss=False)
            if lagging.lease_token is None:
                problems.append("a fill of a key missing from L2 got no lease")
                return
            if (
                await _within(
                    OPERATION_TIMEOUT_S + 1,
                    f"{what} over a fill in flight",
                    author.write_through(key, "v2"),
                    problems,
                )
                is None
            ):
                return
            if author.refetch_after_write:
                # its background refetch would take a lease of its own (voiding the lagger's)
                # if it ran after the eviction below: let it finish first

                async def refetched() -> bool:
                    return author.core.state(key) is L1State.S

                await _poll(refetched, INVALIDATED_WITHIN_S)
            await bus.client.delete(directory.l2_key(key))  # evicted
            if await directory.leased_fill(key, "lagger", lagging.lease_token, 1, "v1"):
                problems.append(f"a fill leased before {what} stored its older copy in L2 after it")

        async def update_left_for_a_sweeper() -> None:
            if broken_updater is None:
                return
            await fresh.get("k10")
            with_error: list[str] = []
            await _within(
                OPERATION_TIMEOUT_S + 1, "", broken_updater.write_through("k10", "v2"), with_error
            )
            await broken_updater.abandon()

            async def fresh_current() -> bool:
                return await fresh.get("k10") == "v2"

            if not await _poll(fresh_current, INVALIDATED_WITHIN_S + SWEEP_AFTER_S):
                problems.append(
                    "a write-update's writer died before its relay published, and a holder "
                    "still serves v1: nobody relayed the outbox"
                )

        async def crashed_owner() -> None:
            await owner.set("k2", "unsaved")
            await owner.abandon()
            await _within(
                OPERATION_TIMEOUT_S + 1,
                "a write-through over a crashed owner",
                taker.write_through("k2", "after"),
                problems,
            )

        async def crashed_holder_strict() -> None:
            if mode is not Mode.STRICT:
                return
            await crashed_holder.get("k3")
            await crashed_holder.abandon()
            await _within(
                OPERATION_TIMEOUT_S + 1,
                "a strict write past a crashed holder",
                taker.write_through("k3", "after"),
                problems,
            )

        async def relay_left_for_a_sweeper() -> None:
            with_error: list[str] = []
            await _within(
                OPERATION_TIMEOUT_S + 1, "", broken_writer.write_through("k4", "v2"), with_error
            )
            await broken_writer.abandon()

            async def holder_current() -> bool:
                return await holder.get("k4") == "v2"

            if not await _poll(holder_current, INVALIDATED_WITHIN_S + SWEEP_AFTER_S):
                problems.append(
                    "a writer died between its commit and its relay, and the holder still "
                    "serves v1: nobody relayed the outbox"
                )

        async def store_left_for_a_sweeper() -> None:
            if broken_storer is None:
                return
            await fresh.get("k14")
            with_error: list[str] = []
            await _within(
                OPERATION_TIMEOUT_S + 1, "", broken_storer.write_through("k14", "v2"), with_error
            )
            await broken_storer.abandon()

            async def fresh_current() -> bool:
                return await fresh.get("k14") == "v2"

            if not await _poll(fresh_current, INVALIDATED_WITHIN_S + SWEEP_AFTER_S):
                problems.append(
                    "a storing writer died before its relay published, and a holder still "
                    "serves v1: nobody relayed the outbox"
                )

        async def held_back_holder_strict() -> None:
            if mode is not Mode.STRICT:
                return
            write = asyncio.create_task(writer.write_through("k5", "v2"))
            await asyncio.wait({write}, timeout=HELD_BACK_S)
            if write.done() and write.exception() is not None:
                problems.append(f"a strict write failed: {write.exception()}")
            elif write.done() and await held.get("k5") == "v1":
                problems.append(
                    "a strict write returned while a holder (its deliveries held back) still "
                    "served the old value"
                )
            release.set()
            await _within(OPERATION_TIMEOUT_S + 1, "a strict write once released", write, problems)

        store = HomeStore(home)

        async def recalled_owner() -> None:
            await keeper.set("k6", "kept")
            read = fresh.get("k6")
            if await _within(OPERATION_TIMEOUT_S + 1, "a recall", read, problems) != "kept":
                problems.append("a read that recalled the owner did not return the owner's write")
            if (await store.read("k6")).owner is not None:
                problems.append("the recalled owner's write-back did not release its grant")

        async def evicted_owner() -> None:
            await evictor.set("k7", "evicted")
            await evictor.evict("k7")
            read = fresh.get("k7")
            if await _within(OPERATION_TIMEOUT_S + 1, "a read", read, problems) != "evicted":
                problems.append("an evicted owner's write was not at the home")

        async def flushed_owner() -> None:
            await flusher.set("k8", "flushed")
            await flusher.flush("k8")
            row = await store.read("k8")
            if row.value != "flushed":
                problems.append(f"a flush did not store the value at the home: {row.value!r}")
            if row.owner is None:
                problems.append("a flush released the owner's grant")

        parts = await asyncio.gather(
            recalled_owner(),
            evicted_owner(),
            flushed_owner(),
            invalidation_and_l2(),
            stored_in_l2(),
            crashed_owner(),
            crashed_holder_strict(),
            relay_left_for_a_sweeper(),
            store_left_for_a_sweeper(),
            held_back_holder_strict(),
            update_to_holders(),
            update_left_for_a_sweeper(),
            return_exceptions=True,
        )
        for part in parts:
            if isinstance(part, SageMemError):
                problems.append(f"{type(part).__name__}: {part}")
            elif isinstance(part, BaseException):
                raise part
    finally:
        release.set()
        for l1 in agents:
            await l1.aclose()
        await held_bus.aclose()
        await bus.aclose()
        await home.aclose()
    return problems


@pytest.mark.parametrize("mode", list(Mode))
async def test_the_real_table_passes_the_production_scenario(
    mode: Mode, redis_url: str, postgres_dsn: str, pg_schema: str
) -> None:
    """Control: with the spec's table the scenario finds nothing."""
    assert await run_scenario(mode, TABLE, redis_url, postgres_dsn, pg_schema) == []


async def _run_mutants(
    mutants: tuple[TableMutant, ...], redis_url: str, dsn: str, schema: str
) -> tuple[list[str], list[str], int]:
    """Put each mutant to the model, run the scenario for the rejected ones (several at once);
    return the report lines, the escaped mutants' names and how many the model rejected."""
    verdicts = [(mutant, _model_rejects(mutant)) for mutant in mutants]
    gate = asyncio.Semaphore(CONCURRENT_SCENARIOS)

    async def scenario(mutant: TableMutant) -> list[str]:
        async with gate:
            return await run_scenario(mutant.mode, mutant.table, redis_url, dsn, schema)

    rejected = [(m, v) for m, v in verdicts if v is not None]
    outcomes = await asyncio.gather(*(scenario(m) for m, _ in rejected))
    found = {m.name: problems for (m, _), problems in zip(rejected, outcomes, strict=True)}
    lines: list[str] = []
    escaped: list[str] = []
    for mutant, verdict in verdicts:
        if verdict is None:
            lines.append(f"{mutant.name}: survives the model at {BOUNDS} (not run)")
            continue
        problems = found[mutant.name]
        lines.append(f"{mutant.name}: model {verdict}; production {problems[:1] or 'PASSED'}")
        if not problems:
            escaped.append(mutant.name)
    return lines, escaped, len(rejected)


async def test_every_server_row_mutant_the_model_rejects_breaks_production(
    redis_url: str, postgres_dsn: str, pg_schema: str, request: pytest.FixtureRequest
) -> None:
    """Each mutant the model rejects makes the scenario fail on the real servers (100 %)."""
    lines, escaped, rejected = await _run_mutants(MUTANTS, redis_url, postgres_dsn, pg_schema)
    summary = (
        f"{rejected - len(escaped)} of {rejected} model-rejected server-row mutants "
        "break production"
    )
    request.node.user_properties.append(("production_mutants", "\n".join([summary, *lines])))
    print("\n".join([summary, *lines]))
    assert rejected >= 10, lines
    assert not escaped, f"{summary}; escaped: {escaped}\n" + "\n".join(lines)
