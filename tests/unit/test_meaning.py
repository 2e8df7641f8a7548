"""Guards and effects are stated once (`sagemem.spec.meaning`), and its readers agree.

The three readers of a guard's condition (the model's compiled Python, the Z3 encoding's
formulas, the production core's compiled Python over an `EntryCore`) are evaluated on states
Hypothesis builds field by field (not only reachable ones), for every guard, every subject and
the payloads of the inbox; the two readers of an effect (model and Z3) are run on the same
states and compared at the version level (`proofs.z3_state.version_level`), the effects that
keep code (`EFFECTS_IN_CODE`) included. About 30 s on 2 busy shared cores.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import z3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proofs.z3_encoding import Encoding, SymState, version_level
from sagemem.coherence.core import SERVER_GUARDS, AgentCore, EntryCore, Payload
from sagemem.spec import model
from sagemem.spec.meaning import (
    EFFECTS,
    EFFECTS_IN_CODE,
    GUARDS,
    LOCAL_FIELDS,
    FreshValue,
    NameOf,
    Set,
    effect_needs_subject,
    nodes,
    server_side,
)
from sagemem.spec.model import (
    UNENCODED_AGENT_FIELDS,
    UNENCODED_GLOBAL_FIELDS,
    UPDATE_BASE,
    AgentState,
    ProtocolDefinition,
    Request,
    State,
    holds,
    initial_state,
    message_version,
)
from sagemem.spec.vocabulary import Effect, Guard, L1State, Mode

MAX_VERSION = 4  # the encoding of 2 writes holds versions up to 4 (see Terms.max_version)
DEFINITIONS = {
    mode: ProtocolDefinition(mode=mode, agents=3, writes=2, fault_budget=None, write_update=True)
    for mode in Mode
}
ENCODINGS = {mode: Encoding(defn) for mode, defn in DEFINITIONS.items()}
MESSAGES = ENCODINGS[Mode.COHERENT].messages

GUARD_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# every effect in Z3 per example: fewer examples, each one covering all 50 effects
EFFECT_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

versions = st.integers(-1, MAX_VERSION)
counts = st.integers(0, MAX_VERSION)


@st.composite
def states(draw: st.DrawFn, agents: int = 3) -> State:
    """A state of 3 agents, field by field, consistent at the value level (version v holds
    value id v), so the value-level checks of the effects in code stay quiet."""
    names = tuple(range(MAX_VERSION + 1))
    built = []
    for _ in range(agents):
        ver, data = draw(versions), draw(versions)
        built.append(
            AgentState(
                st=draw(st.sampled_from(L1State)),
                ver=ver,
                data=data,
                floor=draw(counts),
                missed=draw(st.booleans()),
                inbox=tuple(sorted(draw(st.sets(st.sampled_from(MESSAGES), max_size=3)))),
                req=draw(st.sampled_from(Request)),
                lease=draw(st.booleans()),
                rlease=draw(st.booleans()),
                registered=draw(st.booleans()),
                ack_owed=draw(st.booleans()),
                grant=draw(st.integers(0, 2)),
                l2_lease=draw(st.booleans()),
                unsaved=draw(st.booleans()),
                op=draw(st.integers(0, 2)),
                told=draw(counts),
                val=ver,
                dval=data,
                gone=False,
                rstart=0,
                restored=False,
            )
        )
    home = draw(st.integers(0, MAX_VERSION - 1))
    l2 = draw(versions)
    blank = initial_state(DEFINITIONS[Mode.COHERENT])
    return blank._replace(
        agents=tuple(built),
        home=home,
        outbox=draw(st.sampled_from((0, home))),
        dirty=draw(st.booleans()),
        l2=l2,
        l2_high=max(l2, draw(versions)),
        commits=draw(counts),
        done=draw(counts),
        read_max=draw(counts),
        hval=home,
        l2val=l2,
        names=names,
        completed=draw(counts),
    )


def _payloads(state: State, a: int | None) -> list[int]:
    """The payloads a step of agent `a` may carry: none (0) and its inbox's messages."""
    return [0] if a is None else [0, *state.agents[a].inbox]


def _z3_true(formula: z3.ExprRef) -> bool:
    return bool(z3.is_true(z3.simplify(formula)))


def test_every_guard_has_one_statement() -> None:
    """Every member of the Guard enum has a condition in meaning.GUARDS, and nothing else does."""
    assert set(GUARDS) == set(Guard)


def test_every_effect_is_stated_as_data_or_listed_as_code() -> None:
    """Every effect is either an update in meaning.EFFECTS or listed, with its reason, in
    EFFECTS_IN_CODE: never both, never neither."""
    assert set(EFFECTS) | set(EFFECTS_IN_CODE) == set(Effect)
    assert not set(EFFECTS) & set(EFFECTS_IN_CODE)
    assert all(reason.strip() for reason in EFFECTS_IN_CODE.values())


def test_the_encoding_is_never_asked_for_a_value_level_expression() -> None:
    """A value-level expression (a fresh value, a version's value) is only ever assigned to a
    field the Z3 encoding leaves out, so the encoding skips it instead of failing."""
    unencoded = UNENCODED_AGENT_FIELDS | UNENCODED_GLOBAL_FIELDS
    for effect, statements in EFFECTS.items():
        for statement in statements:
            for node in nodes(statement):
                if isinstance(node, Set) and node.target.name not in unencoded:
                    inner = list(nodes(node.value))
                    assert not any(isinstance(n, FreshValue | NameOf) for n in inner), effect


def test_server_side_guards_are_the_ones_reading_beyond_the_agent() -> None:
    """The core's server-side guards are exactly those whose condition reads a field outside
    LOCAL_FIELDS, and the split is the one production relies on (fill, commit and lease
    answers are the server's; connection, message and fill-data checks are the agent's)."""
    assert frozenset(g for g in Guard if server_side(g)) == SERVER_GUARDS
    local = {g for g in Guard if not server_side(g)}
    assert local == {
        Guard.ALWAYS,
        Guard.CONN_OK,
        Guard.CONN_MISSED,
        Guard.INV_NEWER,
        Guard.INV_NOT_NEWER,
        Guard.DATA_FRESH,
        Guard.DATA_STALE,
        Guard.DATA_NOT_OLDER,
        Guard.DATA_OLDER,
    }
    assert {"ver", "data", "floor", "missed"} == LOCAL_FIELDS


def test_the_core_answers_a_server_side_guard_by_the_reply_branch_only() -> None:
    """A server-side guard holds in the core exactly when the reply's branch names it."""
    core = AgentCore()
    entry = EntryCore()
    for guard in SERVER_GUARDS:
        assert core._holds(guard, entry, entry.data, Payload(branch=guard))
        other = next(g for g in SERVER_GUARDS if g is not guard)
        assert not core._holds(guard, entry, entry.data, Payload(branch=other))
        assert not core._holds(guard, entry, entry.data, Payload())


@GUARD_SETTINGS
@given(state=states())
def test_model_z3_and_core_agree_on_every_guard(state: State) -> None:
    """On any state, for every guard, subject and payload, the model's compiled condition,
    the Z3 formula and (for the guards an agent evaluates) the core's compiled condition say
    the same."""
    enc = ENCODINGS[Mode.COHERENT]
    sym = enc.concrete(state)
    core = AgentCore()
    for a in (None, *range(len(state.agents))):
        for payload in _payloads(state, a):
            for guard in Guard:
                expected = holds(guard, state, a, payload)
                where = f"{guard.name} agent={a} payload={payload} in {model.describe(state)}"
                assert _z3_true(enc.holds(guard, sym, a, payload)) == expected, where
                if a is None or server_side(guard):
                    continue
                ag = state.agents[a]
                entry = EntryCore(
                    state=ag.st, version=ag.ver, data=ag.data, floor=ag.floor, missed=ag.missed
                )
                answer = Payload(version=message_version(payload))
                assert core._holds(guard, entry, ag.data, answer) == expected, where


def _model_effect(mode: Mode, effect: Effect, state: State, a: int | None, payload: int) -> State:
    work = model._Work(state)
    model._apply(effect, work, mode, a, payload)
    return work.freeze()


def _z3_effect(mode: Mode, effect: Effect, state: State, a: int | None, payload: int) -> State:
    enc = ENCODINGS[mode]
    target = _concrete(mode, state).copy()
    enc.apply(effect, target, a, payload)
    return enc.decode(z3.simplify, target)


_CONCRETE: dict[tuple[Mode, State], SymState] = {}


def _concrete(mode: Mode, state: State) -> SymState:
    """The constant terms of `state` (one per state: the effects each run on a copy)."""
    if len(_CONCRETE) > 256:
        _CONCRETE.clear()
    return _CONCRETE.setdefault((mode, state), ENCODINGS[mode].concrete(state))


# The encoding flags at once the write an unfenced store loses; the model leaves it to its
# value-level invariants (see EFFECTS_IN_CODE): compared without the violation field.
_VIOLATION_DIFFERS: frozenset[Effect] = frozenset({Effect.HOME_STORE_UNFENCED})

# What the rows of an effect always have (else the model records a value-level violation,
# which the encoding leaves out, before the version-level one): a read returns a version
# (a copy, or fill data), and the relay publishes a version (the model offers the relay only
# with one in the outbox; the encoding has no message for "version 0 committed").
_PRECONDITION: dict[Effect, Callable[[State, int], bool]] = {
    Effect.RETURN_VALUE: lambda state, a: state.agents[a].ver >= 0,
    Effect.RETURN_VALUE_UNCACHED: lambda state, a: state.agents[a].data >= 0,
    Effect.PUBLISH_INVALIDATIONS: lambda state, a: state.outbox != 0,
    Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS: lambda state, a: state.outbox != 0,
    Effect.PUBLISH_UPDATES: lambda state, a: state.outbox != 0,
}


def _runs(effect: Effect, state: State, a: int) -> bool:
    precondition = _PRECONDITION.get(effect)
    return precondition is None or precondition(state, a)


@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.value)
@EFFECT_SETTINGS
@given(state=states(), data=st.data())
def test_model_and_z3_agree_on_every_effect(mode: Mode, state: State, data: st.DataObject) -> None:
    """Every effect, data or code, takes a state to the same version-level state in the
    model and in the Z3 encoding, for a drawn subject and payload."""
    a = data.draw(st.integers(0, len(state.agents) - 1))
    payload = data.draw(st.sampled_from(_payloads(state, a)))
    for effect in Effect:
        if not _runs(effect, state, a):
            continue
        if effect in (Effect.INSTALL_UPDATE, Effect.NOTE_INVALIDATION) and payload == 0:
            payload_used = UPDATE_BASE + 1  # a message announcing a version
        else:
            payload_used = payload
        expected = version_level(_model_effect(mode, effect, state, a, payload_used))
        actual = _z3_effect(mode, effect, state, a, payload_used)
        if effect in _VIOLATION_DIFFERS:
            expected, actual = expected._replace(violation=""), actual._replace(violation="")
        assert actual == expected, f"{effect.name} agent={a} payload={payload_used}"


@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.value)
@EFFECT_SETTINGS
@given(state=states())
def test_agentless_effects_agree_and_the_others_refuse_without_a_subject(
    mode: Mode, state: State
) -> None:
    """An effect that does not read the subject runs the same in both readers without one; an
    effect that does is refused by the model with a ValueError naming it."""
    for effect in Effect:
        if not _runs(effect, state, 0):
            continue
        if effect in EFFECTS and not effect_needs_subject(effect):
            expected = version_level(_model_effect(mode, effect, state, None, 0))
            assert _z3_effect(mode, effect, state, None, 0) == expected, effect.name
        elif effect in EFFECTS:
            with pytest.raises(ValueError, match="subject"):
                _model_effect(mode, effect, state, None, 0)
