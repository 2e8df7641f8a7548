"""Model-based: Hypothesis drives real coherent agents on the real servers, one operation at a
time, beside a sequential reference of each key, and checks after every step what the spec
allows in that state.

- strict: every read returns the reference (the last completed write); at every quiescent
  point at most one agent owns a key (E/M), and then no other agent holds a copy (SWMR);
- coherent: a read returns the reference, or, while an invalidation to that agent may still be
  in flight, the value it read or wrote last (never an older one: reads are monotonic, and an
  agent always reads its own writes); every agent converges on the reference once the bus is
  quiet;
- both: every transition any agent executed is a row of the spec's table, and replaying the
  recorded events through a fresh core reproduces it (zero divergence).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.core import TraceRecord
from sagemem.errors import VersionConflict
from sagemem.spec import REFUSALS, TABLE
from sagemem.spec.model import ProtocolDefinition
from sagemem.spec.vocabulary import Effect, Event, L1State, Mode
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue
from tests.integration.test_coherent_l1 import assert_trace_follows_the_table

AGENTS = 3
KEYS = ("k0", "k1")
ABSENT = object()
SETTLE_S = 5.0

agents_st = st.integers(0, AGENTS - 1)
keys_st = st.sampled_from(KEYS)


def machine_for(
    mode: Mode,
    redis_url: str,
    dsn: str,
    schema: str,
    definition: ProtocolDefinition | None = None,
) -> type[RuleBasedStateMachine]:
    """A state machine class over real agents in `mode` (each example gets a fresh namespace);
    `definition` runs the agents on a mutated table instead of the spec's."""

    class CoherentAgents(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.namespace = f"mb{uuid.uuid4().hex}"
            self.bus = CoherenceBus(url=redis_url, namespace=self.namespace)
            self.home = L3Tier(dsn=dsn, namespace=self.namespace, schema=schema)
            self.traces: list[list[TraceRecord]] = [[] for _ in range(AGENTS)]
            self.agents = [
                CoherentL1Tier(
                    f"agent{i}",
                    self.bus,
                    mode=mode,
                    home=self.home,
                    tracer=self.traces[i].append,
                    operation_timeout_s=20.0,
                    definition=definition,
                )
                for i in range(AGENTS)
            ]
            # the reference: each key's last completed write (ABSENT: none or deleted)
            self.reference: dict[str, object] = dict.fromkeys(KEYS, ABSENT)
            # coherent: what each agent read or wrote last, per key
            self.last_seen: dict[tuple[int, str], object] = {}
            self.counter = 0

        def run(self, coroutine: Any) -> Any:
            return self.loop.run_until_complete(asyncio.wait_for(coroutine, 30))

        @initialize()
        def start(self) -> None:
            async def go() -> None:
                await self.bus.connect()
                await self.home.connect()
                for l1 in self.agents:
                    await l1.start()

            self.run(go())

        def teardown(self) -> None:
            async def stop() -> None:
                for l1 in self.agents:
                    await l1.aclose()
                await self.home.aclose()
                await self.bus.aclose()

            try:
                if self.bus.connected:
                    self.run(self.settle())
                    self.check_converged()
                    if definition is None:
                        for trace in self.traces:
                            assert_trace_follows_the_table(trace, mode)
            finally:
                self.run(stop())
                self.loop.close()

        # -- helpers --------------------------------------------------------------------

        def fresh_value(self, who: int) -> JSONValue:
            self.counter += 1
            return {"by": who, "n": self.counter}

        async def settle(self) -> None:
            """Wait until every published invalidation was delivered (the bus is quiet)."""
            async with asyncio.timeout(SETTLE_S):
                while True:
                    stats = self.bus.statistics()
                    received = sum(l1.statistics().invalidations_received for l1 in self.agents)
                    sent = sum(l1.statistics().invalidations_sent for l1 in self.agents)
                    if stats.invalidations_received >= sent and received >= sent:
                        return
                    await asyncio.sleep(0.002)

        def observe(self, who: int, key: str, value: object) -> None:
            expected = self.reference[key]
            if mode is Mode.STRICT or value == expected:
                assert value == expected, (who, key, value, expected)
            else:
                # coherent: a stale read may only return what this agent saw last
                assert value == self.last_seen.get((who, key), ABSENT), (
                    f"agent{who} read {value!r} for {key}; the reference is {expected!r} and "
                    f"it last saw {self.last_seen.get((who, key), ABSENT)!r}"
                )
            self.last_seen[(who, key)] = value

        def wrote(self, who: int, key: str, value: object) -> None:
            self.reference[key] = value
            self.last_seen[(who, key)] = value

        def check_converged(self) -> None:
            for key in KEYS:
                for who, l1 in enumerate(self.agents):
                    found = self.run(l1.read(key))
                    value = ABSENT if found is None else found.value
                    assert value == self.reference[key], (who, key, value)

        # -- rules: one per user operation -------------------------------------------------

        @rule(who=agents_st, key=keys_st)
        def read(self, who: int, key: str) -> None:
            found = self.run(self.agents[who].read(key))
            self.observe(who, key, ABSENT if found is None else found.value)

        @rule(who=agents_st, key=keys_st)
        def write_through(self, who: int, key: str) -> None:
            value = self.fresh_value(who)
            self.run(self.agents[who].write_through(key, value))
            self.wrote(who, key, value)

        @rule(who=agents_st, key=keys_st)
        def write_l1(self, who: int, key: str) -> None:
            value = self.fresh_value(who)
            self.run(self.agents[who].set(key, value))
            self.wrote(who, key, value)

        @rule(who=agents_st, key=keys_st)
        def delete(self, who: int, key: str) -> None:
            self.run(self.agents[who].delete(key))
            self.wrote(who, key, ABSENT)

        @rule(who=agents_st, key=keys_st)
        def evict(self, who: int, key: str) -> None:
            self.run(self.agents[who].evict(key))

        @rule(who=agents_st, key=keys_st)
        def flush(self, who: int, key: str) -> None:
            self.run(self.agents[who].flush(key))

        @rule(who=agents_st, key=keys_st, stale=st.booleans())
        def compare_and_swap(self, who: int, key: str, stale: bool) -> None:
            l1 = self.agents[who]
            found = self.run(l1.read(key))
            self.observe(who, key, ABSENT if found is None else found.value)
            expected = None if found is None else found.version
            if stale and expected is not None and expected > 1:
                expected -= 1
            value = self.fresh_value(who)
            try:
                self.run(l1.compare_and_swap(key, value, expected))
            except VersionConflict:
                assert stale or mode is Mode.COHERENT, "a fresh version conflicted in strict"
                return
            self.wrote(who, key, value)

        # -- invariants ----------------------------------------------------------------------

        @invariant()
        def single_writer_multiple_readers(self) -> None:
            if mode is not Mode.STRICT:
                return
            for key in KEYS:
                states = [l1.get_state(key) for l1 in self.agents]
                owners = [s for s in states if s in (L1State.E, L1State.M)]
                assert len(owners) <= 1, (key, states)
                if owners:
                    others = [s for s in states if s not in (L1State.E, L1State.M)]
                    assert all(s is L1State.I for s in others), (key, states)

    return CoherentAgents


MODEL_SETTINGS = settings(
    max_examples=12,
    stateful_step_count=18,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize("mode", [Mode.STRICT, Mode.COHERENT], ids=lambda m: m.value)
def test_real_agents_only_read_what_the_spec_allows(
    mode: Mode, redis_url: str, postgres_dsn: str, pg_schema: str
) -> None:
    machine = machine_for(mode, redis_url, postgres_dsn, pg_schema)
    machine.TestCase.settings = MODEL_SETTINGS
    machine.TestCase().runTest()


def test_the_model_based_test_catches_an_agent_that_ignores_invalidations(
    redis_url: str, postgres_dsn: str, pg_schema: str
) -> None:
    """Negative control: production agents running a table whose Shared copies survive an
    invalidation (S + DELIVER_INVALIDATE stays S) are caught reading a stale value."""
    mutated = tuple(
        dataclasses.replace(
            r, target=L1State.S, effects=tuple(e for e in r.effects if e is not Effect.DROP_COPY)
        )
        if r.source is L1State.S and r.event is Event.DELIVER_INVALIDATE
        else r
        for r in TABLE
    )
    definition = ProtocolDefinition(mode=Mode.STRICT, table=mutated, refusals=REFUSALS)
    machine = machine_for(Mode.STRICT, redis_url, postgres_dsn, pg_schema, definition)
    machine.TestCase.settings = settings(
        MODEL_SETTINGS, max_examples=40, phases=[Phase.generate], print_blob=False
    )
    with pytest.raises(Exception) as caught:  # noqa: PT011  # the check below narrows it
        machine.TestCase().runTest()
    assert _assertion_inside(caught.value), caught.value


def _assertion_inside(error: BaseException) -> bool:
    """An AssertionError, or an exception group holding one (a failing step and teardown)."""
    if isinstance(error, AssertionError):
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(_assertion_inside(inner) for inner in error.exceptions)
    return False
