"""Conformance: the production core (`sagemem.coherence.core`) executes the spec's table exactly.

Hypothesis drives the spec model (`sagemem.spec.model.transitions`) along random paths, with 2
or 3 agents in both modes and every fault. Each agent has a mirror `AgentCore`. Every step the
model takes at an agent (its own events, and the bus's loss events that its listener detects)
is fed to that agent's core (a READ through the `hit` fast path when that answers it), with
the payload a server would answer in the model's state (the branch `holds` selects, the
version it would return). After every step, every core must agree with the model on all the
agent can know locally: L1 state, version, fill data, floor, missed flag, what it waits for,
its lease clocks, the operation in progress. Facts the agent cannot know (its directory
registration, owed acks, whether the home revoked its grant or L2 voided its fill lease) are
only checked one way: the model's "yes" implies the core's "yes".

Beyond the step taken, each step checks every event offered to every agent: the core decides
the same row the model would fire, and refuses (STALLED / NOT_APPLICABLE) what the model does
not enable. Zero divergence is allowed.

A second, exhaustive check walks every reachable state of 2 agents, 2 writes and 1 fault per
mode: each distinct (agent's local view, event, payload) is replayed once on a core seeded
from the model's agent, and every other step must leave every agent's local fields alone,
which is what makes them local. About 10 s CPU for the module (measured on 2 shared cores).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagemem.coherence.core import (
    NO_PAYLOAD,
    SERVER_GUARDS,
    AgentCore,
    EntryCore,
    Operation,
    Payload,
)
from sagemem.spec.model import (
    REQUEST_ALTERNATIVE,
    AgentState,
    ProtocolDefinition,
    Request,
    State,
    Transition,
    canonical,
    describe,
    holds,
    initial_state,
    message_version,
    transitions,
)
from sagemem.spec.table import GUARD_PARTITIONS, Refusal, RefusalKind, Rule, rows_for
from sagemem.spec.vocabulary import EVENT_SITE, Effect, Event, Guard, L1State, Mode, Site

KEY = "k"
STEPS_MAX = 45

_RESPONSE_EVENT = {
    Request.FILL: Event.FILL_FETCH,
    Request.DATA: Event.FILL_DATA,
    Request.COMMIT: Event.HOME_COMMIT,
    Request.ACQUIRE: Event.HOME_ACQUIRE,
    Request.SETTLE: Event.WRITE_SETTLED,
    Request.WRITE_BACK: Event.HOME_WRITE_BACK,
    Request.FLUSH: Event.HOME_FLUSH,
    Request.WAIT_OWNER: Event.RETRY,
}
_ALWAYS_OFFERED = (Event.READ, Event.WRITE_L1, Event.WRITE_THROUGH, Event.FLUSH)

CONFORMANCE_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fed_to_core(t: Transition) -> bool:
    """Steps an agent's core executes: its own events and the bus losses it detects."""
    return t.agent is not None and EVENT_SITE[t.event] in (Site.AGENT, Site.BUS)


_PARTITIONS: dict[tuple[int, Mode, L1State, Event], frozenset[Guard]] = {}


def branch_partition(defn: ProtocolDefinition, source: L1State, event: Event) -> frozenset[Guard]:
    """The guard partition the table uses for (source, event) in the mode (empty: only a
    whole-partition refusal)."""
    memo = (id(defn.table), defn.mode, source, event)
    partition = _PARTITIONS.get(memo)
    if partition is None:
        used = {r.guard for r in rows_for(defn.table, source, event, defn.mode)} | {
            f.guard
            for f in defn.refusals
            if f.source is source and f.event is event and defn.mode in f.modes and f.guard
        }
        partition = frozenset()
        if used:
            partition = next(p for p in GUARD_PARTITIONS if used <= p)
        _PARTITIONS[memo] = partition
    return partition


def server_branch(defn: ProtocolDefinition, state: State, a: int, event: Event) -> Guard:
    """The branch a server script takes: the guard of the table's partition that holds."""
    partition = branch_partition(defn, state.agents[a].st, event)
    if not partition:
        return Guard.ALWAYS  # only a whole-partition refusal: any branch reaches it
    holding = [g for g in partition if g in SERVER_GUARDS and holds(g, state, a, 0)]
    assert len(holding) == 1, f"partition {partition} has {holding} holding"
    return holding[0]


def answer(
    defn: ProtocolDefinition,
    state: State,
    a: int,
    event: Event,
    message: int,
    *,
    data_pending: bool = False,
) -> Payload:
    """The payload production would feed for `event` at agent `a` in the model's `state`
    (`data_pending`: the core waits for the answer of a read it asked the adapter for)."""
    ag = state.agents[a]
    match event:
        case Event.DELIVER_INVALIDATE:
            return Payload(version=message)
        case Event.DELIVER_UPDATE:
            version = message_version(message)
            return Payload(version=version, value=f"v{version}")
        case Event.WRITE_L1 | Event.WRITE_THROUGH:
            return Payload(value=f"write{state.writes + 1}")
        case Event.FILL_FETCH:
            branch = server_branch(defn, state, a, event)
            if branch is Guard.FETCH_L2_HIT:
                return Payload(branch=branch, version=state.l2, value=f"v{state.l2}")
            if branch in (Guard.FETCH_FREE, Guard.FETCH_SETTLED):
                return Payload(
                    branch=branch, version=state.home, value=f"v{state.home}", fill_lease="t"
                )
            return Payload(branch=branch, owner_epoch=7)
        case Event.FILL_DATA:
            if data_pending:
                return Payload(version=ag.data, value=f"v{ag.data}")
            return NO_PAYLOAD
        case Event.HOME_COMMIT | Event.HOME_ACQUIRE:
            branch = server_branch(defn, state, a, event)
            return Payload(branch=branch, version=state.home + 1, owner_epoch=state.commits + 1)
        case Event.WRITE_SETTLED | Event.HOME_WRITE_BACK | Event.HOME_FLUSH | Event.HOME_CONFLICT:
            return Payload(branch=server_branch(defn, state, a, event))
    return NO_PAYLOAD


def assert_mirrors(entry: EntryCore, ag: AgentState, where: str) -> None:
    """The core's entry agrees with the model's agent on every locally knowable field."""
    assert entry.state is ag.st, where
    assert entry.version == ag.ver, where
    if entry.data_pending:
        assert ag.req is Request.DATA, where
        assert ag.data >= 0, where
    else:
        assert entry.data == ag.data, where
    assert entry.floor == ag.floor, where
    assert entry.missed == ag.missed, where
    assert entry.request is ag.req, where
    assert entry.owner_lease == ag.lease, where
    assert entry.read_lease == ag.rlease, where
    assert int(entry.operation) == ag.op, where
    # shared facts the agent can only believe: the model's yes implies the core's yes
    assert not ag.l2_lease or entry.fill_lease is not None, where
    assert ag.grant != 1 or entry.owner_epoch is not None, where


def offered_events(defn: ProtocolDefinition, state: State, ag: AgentState) -> list[Event]:
    """Agent events the model always offers (user operations within the write bound, and the
    response to the agent's request): if no transition takes one, it must be refused."""
    events = [
        e for e in _ALWAYS_OFFERED if state.writes < defn.writes or e in (Event.READ, Event.FLUSH)
    ]
    if ag.req is not Request.NONE:
        events.append(_RESPONSE_EVENT[ag.req])
        alternative = REQUEST_ALTERNATIVE.get(ag.req)
        if alternative is not None:
            events.append(alternative)
    return events


def check_offers(
    defn: ProtocolDefinition, state: State, offered: list[Transition], cores: list[AgentCore]
) -> None:
    """Every offered agent step decides the same row; every refused one is refused alike."""
    for t in offered:
        if fed_to_core(t) and EVENT_SITE[t.event] is Site.AGENT:
            assert t.agent is not None
            core = cores[t.agent]
            pending = core.snapshot(KEY).data_pending
            payload = answer(defn, state, t.agent, t.event, t.payload, data_pending=pending)
            assert core.decide(KEY, t.event, payload) is t.rule, t.label
    for a, ag in enumerate(state.agents):
        enabled = {t.event for t in offered if t.agent == a}
        for event in offered_events(defn, state, ag):
            if event in enabled:
                continue
            pending = cores[a].snapshot(KEY).data_pending
            payload = answer(defn, state, a, event, 0, data_pending=pending)
            decided = cores[a].decide(KEY, event, payload)
            assert isinstance(decided, Refusal), f"agent{a + 1} {event.name}: {describe(state)}"
            assert decided.kind is not RefusalKind.IMPOSSIBLE


def run_path(defn: ProtocolDefinition, data: st.DataObject) -> None:
    state = initial_state(defn)
    cores = [AgentCore.from_definition(defn) for _ in range(defn.agents)]
    path: list[str] = []
    for _ in range(STEPS_MAX):
        offered = list(transitions(defn, state))
        assert all(t.rule is not None for t in offered), [t.label for t in offered]
        if not offered:
            break
        check_offers(defn, state, offered, cores)
        # draw the event first, then the step: rare events are as likely as frequent ones
        events = sorted({t.event.value for t in offered})
        event = events[data.draw(st.integers(0, len(events) - 1), label="event")]
        steps = [t for t in offered if t.event.value == event]
        t = steps[data.draw(st.integers(0, len(steps) - 1), label="step")]
        path.append(t.label)
        where = " / ".join(path)
        if fed_to_core(t):
            assert t.agent is not None
            core = cores[t.agent]
            pending = core.snapshot(KEY).data_pending
            payload = answer(defn, state, t.agent, t.event, t.payload, data_pending=pending)
            hit = core.hit(KEY) if t.event is Event.READ else None
            if hit is not None:  # the fast path must be a pure hit row of the model
                assert t.rule is not None, where
                assert t.rule.effects == (Effect.RETURN_VALUE,), where
                assert hit[0] == state.agents[t.agent].ver, where
            else:
                step = core.handle(KEY, t.event, payload)
                rule: Rule | None = step.rule
                assert rule is t.rule, where
                if EVENT_SITE[t.event] is Site.AGENT:
                    assert step.target is t.target.agents[t.agent].st, where
        state = t.target
        assert not state.violation, where
        for a, ag in enumerate(state.agents):
            assert_mirrors(cores[a].snapshot(KEY), ag, f"agent{a + 1} after {where}")


def entry_of(ag: AgentState) -> EntryCore:
    """What the agent of the model knows locally, as a core entry."""
    return EntryCore(
        state=ag.st,
        version=ag.ver,
        value=f"v{ag.ver}" if ag.ver >= 0 else None,
        data=ag.data,
        data_value=f"v{ag.data}" if ag.data >= 0 else None,
        floor=ag.floor,
        missed=ag.missed,
        request=ag.req,
        owner_lease=ag.lease,
        read_lease=ag.rlease,
        fill_lease="t" if ag.l2_lease else None,
        owner_epoch=1 if ag.grant == 1 else None,
        operation=Operation(ag.op),
        write_value="w" if ag.op == Operation.WRITE else None,
    )


def local_fields(ag: AgentState) -> tuple[object, ...]:
    """The fields of the model's agent that its core holds exactly."""
    return (ag.st, ag.ver, ag.data, ag.floor, ag.missed, ag.req, ag.lease, ag.rlease, ag.op)


def agent_rows(defn: ProtocolDefinition) -> set[Rule]:
    """The rows of `defn` an agent's core executes (agent events and bus losses)."""
    return {
        r
        for r in defn.table
        if defn.mode in r.modes and EVENT_SITE[r.event] in (Site.AGENT, Site.BUS)
    }


type _View = tuple[object, ...]


def view(ag: AgentState, *, data_pending: bool = False) -> _View:
    """Everything the core is seeded with: the local fields and the two believed facts.

    With `data_pending`, the fill data is the answer of a read the adapter has yet to make
    (the model reads the home atomically with the FILL_DATA step; production reads after the
    decision and feeds the answer with the next FILL_DATA), so it is left out.
    """
    fields = (*local_fields(ag), ag.l2_lease, ag.grant == 1)
    return (*fields[:2], None, *fields[3:]) if data_pending else fields


class ExhaustiveCheck:
    """Replays agent steps on seeded cores, once per distinct (agent view, event, payload).

    The model's answer for a given view, event and payload must always be the same (else a
    supposedly local field depends on something the agent cannot know): that is checked too.
    """

    def __init__(self, defn: ProtocolDefinition) -> None:
        self.defn = defn
        self.outcomes: dict[tuple[_View, Event, Payload], tuple[Rule | Refusal, _View]] = {}
        self.refusals: dict[tuple[_View, Event, Payload], RefusalKind] = {}
        self.fired: set[Rule] = set()

    def seeded(self, ag: AgentState) -> AgentCore:
        core = AgentCore.from_definition(self.defn)
        core.load(KEY, entry_of(ag))
        return core

    def step(self, state: State, t: Transition) -> None:
        assert t.agent is not None
        assert t.rule is not None
        ag, after = state.agents[t.agent], t.target.agents[t.agent]
        payload = answer(self.defn, state, t.agent, t.event, t.payload)
        memo = (view(ag), t.event, payload)
        expected = self.outcomes.get(memo)
        if expected is None:
            where = f"{t.label} in {describe(state)}"
            core = self.seeded(ag)
            step = core.handle(KEY, t.event, payload)
            assert step.rule is t.rule, where
            entry = core.snapshot(KEY)
            assert_mirrors(entry, after, where)
            expected = (t.rule, view(after, data_pending=entry.data_pending))
            self.outcomes[memo] = expected
            self.fired.add(t.rule)
        pending = expected[1][2] is None
        if expected != (t.rule, view(after, data_pending=pending)):
            raise AssertionError(f"not local: {t.label} in {describe(state)}")

    def refused(self, state: State, a: int, event: Event) -> None:
        ag = state.agents[a]
        payload = answer(self.defn, state, a, event, 0)
        memo = (view(ag), event, payload)
        if memo not in self.refusals:
            decided = self.seeded(ag).decide(KEY, event, payload)
            assert isinstance(decided, Refusal), f"agent{a + 1} {event.name}: {describe(state)}"
            assert decided.kind is not RefusalKind.IMPOSSIBLE
            self.refusals[memo] = decided.kind

    def run(self) -> None:
        """Depth-first over every reachable state of the definition."""
        start = canonical(initial_state(self.defn))
        seen = {start}
        frontier = [start]
        while frontier:
            state = frontier.pop()
            offered = list(transitions(self.defn, state))
            for a, ag in enumerate(state.agents):
                enabled = {t.event for t in offered if t.agent == a}
                for event in offered_events(self.defn, state, ag):
                    if event not in enabled:
                        self.refused(state, a, event)
            for t in offered:
                assert t.rule is not None, t.label
                subject = t.agent if fed_to_core(t) else None
                if subject is not None:
                    self.step(state, t)
                for b, (before, after) in enumerate(
                    zip(state.agents, t.target.agents, strict=True)
                ):
                    if b == subject or before is after:  # the model interns agent tuples
                        continue
                    if local_fields(before) != local_fields(after):
                        raise AssertionError(
                            f"agent{b + 1} changed by {t.label}: {describe(state)}"
                        )
                target = canonical(t.target)
                if target not in seen:
                    seen.add(target)
                    frontier.append(target)


# Agent rows these bounds cannot reach (they need deeper runs; the unit tests exercise them).
# Defensive rows (see tests/unit/test_explore.py and spec/table.py), and one that needs deeper
# bounds.
_DEFENSIVE: frozenset[tuple[L1State, Event, Guard]] = frozenset(
    {
        (L1State.IS_D_I, Event.RESYNC, Guard.ALWAYS),
        (L1State.IS_D, Event.FILL_DATA, Guard.DATA_STALE),
        (L1State.MS_A, Event.HOME_WRITE_BACK, Guard.GRANT_LOST),
        (L1State.ME_A, Event.HOME_FLUSH, Guard.GRANT_LOST),
    }
)
_UNREACHED: dict[Mode, frozenset[tuple[L1State, Event, Guard]]] = {
    Mode.COHERENT: _DEFENSIVE,
    Mode.STRICT: _DEFENSIVE,
}


@pytest.mark.parametrize("mode", [Mode.COHERENT, Mode.STRICT], ids=lambda m: m.value)
def test_core_agrees_with_every_reachable_agent_step(mode: Mode) -> None:
    """Exhaustively (2 agents, 2 writes, 1 fault): every agent step of every reachable state
    fires the same row in a core seeded with the agent's local fields and leaves the same
    fields, every refused user operation or response is refused by the core too, and no other
    step changes any agent's local fields."""
    defn = ProtocolDefinition(mode=mode, agents=2, writes=2, fault_budget=1, write_update=True)
    check = ExhaustiveCheck(defn)
    check.run()
    unfired = {(r.source, r.event, r.guard) for r in agent_rows(defn) - check.fired} - _UNREACHED[
        mode
    ]
    assert not unfired


@pytest.mark.parametrize("agents", [2, 3])
@pytest.mark.parametrize("mode", [Mode.COHERENT, Mode.STRICT], ids=lambda m: m.value)
@CONFORMANCE_SETTINGS
@given(data=st.data())
def test_core_follows_the_model_step_by_step(mode: Mode, agents: int, data: st.DataObject) -> None:
    """Along random model paths each agent's core fires the same rows and holds the same
    local fields as the model's agent, and refuses exactly what the model does not enable."""
    run_path(ProtocolDefinition(mode=mode, agents=agents, writes=2, fault_budget=2), data)
