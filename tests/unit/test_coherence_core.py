"""Unit tests of the sans-IO coherence core: one family of table rows per test."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import sagemem.spec
from sagemem.coherence import core as core_module
from sagemem.coherence.core import (
    NO_VERSION,
    Action,
    AgentCore,
    EntryCore,
    Operation,
    Outcome,
    Payload,
    Step,
    TraceRecord,
)
from sagemem.errors import ConfigurationError, ProtocolError
from sagemem.spec.model import Request
from sagemem.spec.table import REFUSALS, TABLE, Refusal, RefusalKind, Rule
from sagemem.spec.vocabulary import Effect, Event, Guard, L1State, Mode

KEY = "notes/today"


def effects(step: Step) -> list[Effect]:
    """The effects the adapter must perform, in order."""
    return [action.effect for action in step.actions]


def fill(core: AgentCore, version: int, *, key: str = KEY) -> Step:
    """READ on a miss, the fill script reading the home, then the data arriving."""
    assert core.handle(key, Event.READ).target is L1State.IS_D
    branch = Guard.FETCH_SETTLED if core.mode is Mode.STRICT else Guard.FETCH_FREE
    core.handle(
        key,
        Event.FILL_FETCH,
        Payload(branch=branch, version=version, value=f"v{version}", fill_lease="t1"),
    )
    return core.handle(key, Event.FILL_DATA)


def test_core_executes_the_spec_table_object() -> None:
    """The core runs THE table of sagemem.spec, not a copy."""
    core = AgentCore()
    assert core.table is sagemem.spec.TABLE
    assert core.refusals is sagemem.spec.REFUSALS
    step = core.handle(KEY, Event.READ)
    assert step.rule is not None
    assert any(step.rule is row for row in sagemem.spec.TABLE)


def test_core_module_does_no_io() -> None:
    """The core imports only the standard library's pure modules, the spec and sagemem's
    errors and values: no driver, no asyncio, no sockets."""
    tree = ast.parse(Path(core_module.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    allowed = {
        "__future__",
        "collections.abc",
        "dataclasses",
        "enum",
        "typing",
        "sagemem.errors",
        "sagemem.values",
        "sagemem.spec.meaning",
        "sagemem.spec.model",
        "sagemem.spec.table",
        "sagemem.spec.vocabulary",
    }
    assert imported <= allowed, imported - allowed


def test_miss_fills_installs_and_returns_the_value() -> None:
    """A miss registers, fetches from the home with a fill lease, installs S and returns."""
    core = AgentCore()
    first = core.handle(KEY, Event.READ)
    assert effects(first) == [Effect.REQUEST_FILL]
    fetched = core.handle(
        KEY,
        Event.FILL_FETCH,
        Payload(branch=Guard.FETCH_FREE, version=3, value="v3", fill_lease="t1"),
    )
    assert fetched.script_effects == (
        Effect.DIRECTORY_ADD_HOLDER,
        Effect.L2_TAKE_LEASE,
        Effect.HOME_READ,
    )
    assert fetched.actions == ()
    assert core.snapshot(KEY).request is Request.DATA
    step = core.handle(KEY, Event.FILL_DATA)
    assert step.target is L1State.S
    assert step.actions == (
        Action(Effect.L2_LEASED_FILL, version=3, value="v3", fill_lease="t1"),
        Action(Effect.RETURN_VALUE, version=3, value="v3"),
    )
    entry = core.snapshot(KEY)
    assert (entry.version, entry.value, entry.floor, entry.fill_lease) == (3, "v3", 3, None)
    hit = core.handle(KEY, Event.READ)
    assert hit.actions == (Action(Effect.RETURN_VALUE, version=3, value="v3"),)


def test_fill_racing_an_invalidation_returns_the_data_uncached() -> None:
    """An invalidation during the fill moves IS_D to IS_D_I: the data is returned once and
    never cached, and the registration is withdrawn."""
    core = AgentCore()
    core.handle(KEY, Event.READ)
    core.handle(
        KEY,
        Event.FILL_FETCH,
        Payload(branch=Guard.FETCH_L2_HIT, version=1, value="old"),
    )
    raced = core.handle(KEY, Event.DELIVER_INVALIDATE, Payload(version=1))
    assert raced.target is L1State.IS_D_I
    step = core.handle(KEY, Event.FILL_DATA)
    assert step.target is L1State.I
    assert effects(step) == [
        Effect.L2_ABANDON_LEASE,
        Effect.DIRECTORY_REMOVE_HOLDER,
        Effect.RETURN_VALUE_UNCACHED,
    ]
    assert step.actions[-1] == Action(Effect.RETURN_VALUE_UNCACHED, version=1, value="old")
    entry = core.snapshot(KEY)
    assert (entry.version, entry.value, entry.data) == (NO_VERSION, None, NO_VERSION)


def test_fill_older_than_a_known_version_fetches_again() -> None:
    """Fill data older than the floor is never used: the core runs the fill script again (which
    asks the home whether an owner holds newer data) and installs only the fresh answer."""
    core = AgentCore()
    core.handle(KEY, Event.DELIVER_INVALIDATE, Payload(version=5))  # floor 5, still I
    core.handle(KEY, Event.READ)
    core.handle(KEY, Event.FILL_FETCH, Payload(branch=Guard.FETCH_L2_HIT, version=4, value="v4"))
    stale = core.handle(KEY, Event.FILL_DATA)
    assert stale.target is L1State.IS_D
    assert stale.guard is Guard.DATA_STALE
    assert effects(stale) == [Effect.L2_ABANDON_LEASE, Effect.REFETCH]
    assert core.snapshot(KEY).request is Request.FILL
    with pytest.raises(ProtocolError, match="no fill data"):
        core.handle(KEY, Event.FILL_DATA)
    core.handle(
        KEY,
        Event.FILL_FETCH,
        Payload(branch=Guard.FETCH_FREE, version=5, value="v5", fill_lease="t"),
    )
    fresh = core.handle(KEY, Event.FILL_DATA)
    assert fresh.target is L1State.S
    assert fresh.actions[-1] == Action(Effect.RETURN_VALUE, version=5, value="v5")


def test_strict_invalidated_fill_refetches_instead_of_returning() -> None:
    """Strict mode: an invalidated fill fetches again instead of returning its data."""
    core = AgentCore(Mode.STRICT)
    core.handle(KEY, Event.READ)
    core.handle(KEY, Event.FILL_FETCH, Payload(branch=Guard.FETCH_L2_HIT, version=1))
    inv = core.handle(KEY, Event.DELIVER_INVALIDATE, Payload(version=2))
    assert effects(inv) == [Effect.SEND_ACK]
    step = core.handle(KEY, Event.FILL_DATA)
    assert step.target is L1State.IS_D
    assert effects(step) == [Effect.L2_ABANDON_LEASE, Effect.REFETCH]
    assert core.snapshot(KEY).request is Request.FILL


def test_invalidation_not_newer_than_the_owners_copy_is_ignored() -> None:
    """A late invalidation (version <= the owner's) leaves E/M untouched; a newer one is a
    protocol error (no version is committed while a live grant is held)."""
    core = AgentCore()
    core.handle(KEY, Event.WRITE_L1, Payload(value="mine"))
    core.handle(
        KEY,
        Event.HOME_ACQUIRE,
        Payload(branch=Guard.NOT_OWNED_BY_OTHER, version=4, owner_epoch=9),
    )
    settled = core.handle(KEY, Event.WRITE_SETTLED, Payload(branch=Guard.PUBLISHED))
    assert settled.target is L1State.M
    assert settled.actions == (Action(Effect.ACK_WRITE, version=4),)
    late = core.handle(KEY, Event.DELIVER_INVALIDATE, Payload(version=3))
    assert late.target is L1State.M
    assert late.guard is Guard.INV_NOT_NEWER
    assert late.actions == ()
    assert core.snapshot(KEY).value == "mine"
    with pytest.raises(ProtocolError, match=r"state M, event DELIVER_INVALIDATE.*INV_NEWER"):
        core.handle(KEY, Event.DELIVER_INVALIDATE, Payload(version=5))
    assert core.state(KEY) is L1State.M


def test_invalidation_drops_a_shared_copy() -> None:
    """An invalidation of a Shared copy drops it and raises the floor."""
    core = AgentCore()
    fill(core, 1)
    step = core.handle(KEY, Event.DELIVER_INVALIDATE, Payload(version=2))
    assert step.target is L1State.I
    entry = core.snapshot(KEY)
    assert (entry.version, entry.floor) == (NO_VERSION, 2)


def test_missed_messages_make_a_cached_copy_unusable_until_resync() -> None:
    """After a detected loss, a Shared read stalls and a fill's data waits; RESYNC drops the
    copy (and turns a fill in flight into an uncached one)."""
    core = AgentCore()
    fill(core, 1)
    fill(core, 1, key="other")
    core.handle("other", Event.EVICT)
    core.handle("other", Event.READ)
    core.handle("other", Event.FILL_FETCH, Payload(branch=Guard.FETCH_L2_HIT, version=1))
    lost = core.connection_lost()
    assert {step.key for step in lost} == {KEY, "other"}
    assert core.snapshot(KEY).missed
    stalled = core.handle(KEY, Event.READ)
    assert stalled.outcome is Outcome.STALLED
    assert stalled.stalled
    assert stalled.refusal is not None
    assert stalled.refusal.kind is RefusalKind.STALLED
    assert stalled.actions == ()
    assert core.handle("other", Event.FILL_DATA).stalled
    resync = core.handle(KEY, Event.RESYNC)
    assert resync.target is L1State.I
    assert not core.snapshot(KEY).missed
    assert core.handle("other", Event.RESYNC).target is L1State.IS_D_I
    assert core.handle(KEY, Event.READ).target is L1State.IS_D


def test_crash_loses_everything_local() -> None:
    """A crash leaves an empty Invalid entry: no copy, floor, lease, request or operation."""
    core = AgentCore(Mode.STRICT)
    fill(core, 2)
    core.handle(KEY, Event.WRITE_L1, Payload(value="x"))
    step = core.handle(KEY, Event.CRASH)
    assert step.target is L1State.I
    assert step.actions == ()
    assert core.snapshot(KEY) == EntryCore()
    assert core.forget(KEY)
    assert core.keys() == ()


def test_user_operation_in_flight_is_not_applicable() -> None:
    """A second operation while one is in flight is NOT_APPLICABLE (the adapter queues it);
    nothing changes."""
    core = AgentCore()
    core.handle(KEY, Event.READ)
    before = core.snapshot(KEY)
    step = core.handle(KEY, Event.WRITE_THROUGH, Payload(value=1))
    assert step.outcome is Outcome.NOT_APPLICABLE
    assert step.rule is None
    assert core.snapshot(KEY) == before
    assert core.handle(KEY, Event.FLUSH).outcome is Outcome.NOT_APPLICABLE


def test_impossible_and_unexpected_events_raise_protocol_errors() -> None:
    """An IMPOSSIBLE refusal, an answer nobody asked for and a missing payload raise a
    ProtocolError naming the state and event; the entry does not change."""
    core = AgentCore()
    with pytest.raises(ProtocolError, match=r"state I, event HOME_COMMIT"):
        core.handle(KEY, Event.HOME_COMMIT, Payload(branch=Guard.NOT_OWNED_BY_OTHER, version=1))
    with pytest.raises(ProtocolError, match="invalidation's version"):
        core.handle(KEY, Event.DELIVER_INVALIDATE)
    core.handle(KEY, Event.READ)
    with pytest.raises(ProtocolError, match="branch"):
        core.handle(KEY, Event.FILL_FETCH)
    with pytest.raises(ProtocolError, match="must carry the version"):
        core.handle(KEY, Event.FILL_FETCH, Payload(branch=Guard.FETCH_L2_HIT))
    with pytest.raises(ProtocolError, match="FETCH_SETTLED"):
        core.handle(KEY, Event.FILL_FETCH, Payload(branch=Guard.FETCH_SETTLED, version=1))
    with pytest.raises(ProtocolError, match="runs at the home"):
        core.handle(KEY, Event.OUTBOX_RELAY)
    assert core.snapshot(KEY).request is Request.FILL


def test_strict_fill_waits_while_a_write_settles() -> None:
    """Strict: the fill script's UNSETTLED branch stalls the fill (the request stays)."""
    core = AgentCore(Mode.STRICT)
    core.handle(KEY, Event.READ)
    step = core.handle(KEY, Event.FILL_FETCH, Payload(branch=Guard.FETCH_UNSETTLED))
    assert step.stalled
    assert core.snapshot(KEY).request is Request.FILL


def test_owned_key_recalls_then_retries() -> None:
    """A fill that finds an owner sends a recall, waits for the timer, then asks again."""
    core = AgentCore()
    core.handle(KEY, Event.READ)
    owned = core.handle(KEY, Event.FILL_FETCH, Payload(branch=Guard.FETCH_OWNED, owner_epoch=4))
    assert owned.actions == (Action(Effect.SEND_RECALL, owner_epoch=4), Action(Effect.AWAIT_OWNER))
    assert core.snapshot(KEY).request is Request.WAIT_OWNER
    retry = core.handle(KEY, Event.RETRY)
    assert effects(retry) == [Effect.REQUEST_FILL]


def test_write_through_commits_then_acknowledges_after_publication() -> None:
    """A write-through sends its value to the home's CAS, waits for the invalidations to be
    published (stalls while unpublished), then acknowledges and keeps no copy."""
    core = AgentCore()
    start = core.handle(KEY, Event.WRITE_THROUGH, Payload(value={"a": 1}))
    assert start.actions == (Action(Effect.REQUEST_COMMIT, value={"a": 1}),)
    commit = core.handle(
        KEY, Event.HOME_COMMIT, Payload(branch=Guard.NOT_OWNED_BY_OTHER, version=7)
    )
    assert commit.script_effects == (Effect.HOME_COMMIT_VERSION,)
    assert commit.target is L1State.WT_A
    assert core.handle(KEY, Event.WRITE_SETTLED, Payload(branch=Guard.UNPUBLISHED)).stalled
    done = core.handle(KEY, Event.WRITE_SETTLED, Payload(branch=Guard.PUBLISHED))
    assert done.target is L1State.I
    assert done.actions == (Action(Effect.ACK_WRITE, version=7, existed=False),)
    entry = core.snapshot(KEY)
    assert (entry.floor, entry.version, entry.operation) == (7, NO_VERSION, Operation.NONE)


def test_owner_recall_writes_back_and_keeps_a_shared_copy() -> None:
    """A recalled owner writes its data back (with its grant epoch) and stays Shared."""
    core = AgentCore()
    core.handle(KEY, Event.WRITE_L1, Payload(value="draft"))
    core.handle(
        KEY, Event.HOME_ACQUIRE, Payload(branch=Guard.NOT_OWNED_BY_OTHER, version=2, owner_epoch=5)
    )
    core.handle(KEY, Event.WRITE_SETTLED, Payload(branch=Guard.PUBLISHED))
    recall = core.handle(KEY, Event.DELIVER_RECALL)
    assert recall.target is L1State.MS_A
    assert recall.actions == (
        Action(Effect.DIRECTORY_ADD_HOLDER),
        Action(Effect.REQUEST_WRITE_BACK, version=2, value="draft", owner_epoch=5),
    )
    back = core.handle(KEY, Event.HOME_WRITE_BACK, Payload(branch=Guard.GRANT_HELD))
    assert back.target is L1State.S
    entry = core.snapshot(KEY)
    assert (entry.version, entry.value, entry.owner_lease, entry.owner_epoch) == (
        2,
        "draft",
        False,
        None,
    )


def test_lapsed_owner_write_back_is_fenced_and_reported() -> None:
    """An owner whose lease lapsed writes back; if the home revoked the grant meanwhile the
    write-back is fenced and the lost value is reported."""
    core = AgentCore()
    core.handle(KEY, Event.WRITE_L1, Payload(value="late"))
    core.handle(
        KEY, Event.HOME_ACQUIRE, Payload(branch=Guard.NOT_OWNED_BY_OTHER, version=1, owner_epoch=1)
    )
    core.handle(KEY, Event.WRITE_SETTLED, Payload(branch=Guard.PUBLISHED))
    lapse = core.handle(KEY, Event.LEASE_LAPSE)
    assert lapse.target is L1State.MI_A
    assert effects(lapse) == [Effect.LEASE_LAPSED, Effect.REQUEST_WRITE_BACK]
    fenced = core.handle(KEY, Event.HOME_WRITE_BACK, Payload(branch=Guard.GRANT_LOST))
    assert fenced.target is L1State.I
    assert fenced.actions == (Action(Effect.REPORT_FENCED, version=1, value="late"),)


def test_bus_loss_rows_mark_the_entry_missed() -> None:
    """A dropped message runs the bus row: the state stays, the entry is marked missed."""
    core = AgentCore()
    fill(core, 1)
    step = core.handle(KEY, Event.DROP_MESSAGE)
    assert step.rule is not None
    assert step.source is step.target is L1State.S
    assert step.actions == ()
    assert core.snapshot(KEY).missed
    with pytest.raises(ProtocolError, match="not a bus event"):
        core.connection_lost(Event.CRASH)


def test_tracer_records_every_executed_row() -> None:
    """The tracer sees each executed row (not refusals) with its guard and payload."""
    records: list[TraceRecord] = []
    core = AgentCore(tracer=records.append)
    fill(core, 3)
    core.handle(KEY, Event.WRITE_L1)  # S -> IM_H
    core.handle(KEY, Event.READ)  # refused: not traced
    assert [(r.source, r.event, r.guard, r.target) for r in records] == [
        (L1State.I, Event.READ, Guard.ALWAYS, L1State.IS_D),
        (L1State.IS_D, Event.FILL_FETCH, Guard.FETCH_FREE, L1State.IS_D),
        (L1State.IS_D, Event.FILL_DATA, Guard.DATA_FRESH, L1State.S),
        (L1State.S, Event.WRITE_L1, Guard.ALWAYS, L1State.IM_H),
    ]
    assert records[1].payload.version == 3
    assert records[3].effects == (
        Effect.DIRECTORY_REMOVE_HOLDER,
        Effect.DROP_COPY,
        Effect.REQUEST_OWNERSHIP,
    )


def test_core_executes_a_mutated_table() -> None:
    """With a mutant table (the stale-fill fix removed) the core executes the mutant rows,
    so mutation tests can target production code."""
    mutant = tuple(
        dataclasses.replace(r, target=L1State.IS_D)
        if r.source is L1State.IS_D and r.event is Event.DELIVER_INVALIDATE
        else r
        for r in TABLE
    )
    core = AgentCore(table=mutant, refusals=REFUSALS)
    assert core.table is mutant
    core.handle(KEY, Event.READ)
    core.handle(KEY, Event.FILL_FETCH, Payload(branch=Guard.FETCH_L2_HIT, version=1))
    assert core.handle(KEY, Event.DELIVER_INVALIDATE, Payload(version=2)).target is L1State.IS_D
    # the floor was raised, so the data is refused as stale rather than cached
    assert core.handle(KEY, Event.FILL_DATA).guard is Guard.DATA_STALE
    definition = sagemem.spec.ProtocolDefinition(table=mutant)
    assert AgentCore.from_definition(definition).table is mutant


def test_missing_row_in_a_mutated_table_raises() -> None:
    """A table without the (I, READ) row makes READ on a miss a ProtocolError, not a no-op."""
    mutant = tuple(r for r in TABLE if not (r.source is L1State.I and r.event is Event.READ))
    core = AgentCore(table=mutant)
    with pytest.raises(ProtocolError, match=r"\(I, READ\)"):
        core.handle(KEY, Event.READ)


def test_answer_to_no_operation_is_refused() -> None:
    """A row that would return a value to no read (a mutant) raises before anything changes."""
    mutant = tuple(
        dataclasses.replace(r, effects=(Effect.RETURN_VALUE,))
        if r.source is L1State.S and r.event is Event.EVICT
        else r
        for r in TABLE
    )
    core = AgentCore(table=mutant)
    fill(core, 1)
    with pytest.raises(ProtocolError, match="no read is in progress"):
        core.handle(KEY, Event.EVICT)
    assert core.state(KEY) is L1State.S


def test_branches_list_the_script_body_of_each_answer() -> None:
    """For a server step the core tells the adapter what the script does in each branch."""
    core = AgentCore(Mode.STRICT)
    core.handle(KEY, Event.READ)
    assert core.branches(KEY, Event.FILL_FETCH) == {
        Guard.FETCH_L2_HIT: (Effect.DIRECTORY_ADD_HOLDER, Effect.L2_READ),
        Guard.FETCH_OWNED: (),
        Guard.FETCH_SETTLED: (Effect.DIRECTORY_ADD_HOLDER, Effect.L2_TAKE_LEASE, Effect.HOME_READ),
    }
    relay = core.shared_row(Event.OUTBOX_RELAY, Guard.ALWAYS)
    assert isinstance(relay, Rule)
    assert Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS in relay.effects
    refusal = core.shared_row(Event.HOME_EXPIRE_OWNER, Guard.OWNER_LEASE_LIVE)
    assert not isinstance(refusal, Rule)
    assert refusal.kind is RefusalKind.STALLED


def test_forget_keeps_entries_with_something_in_flight() -> None:
    """forget() drops only idle entries."""
    core = AgentCore()
    core.handle(KEY, Event.READ)
    assert not core.forget(KEY)
    assert core.keys() == (KEY,)


def test_recall_for_a_released_grant_is_void() -> None:
    """A recall tagged with an old grant's epoch reaching a writer whose commit released that
    grant is ignored (the table calls an effective one impossible there)."""
    core = AgentCore()
    core.handle(KEY, Event.WRITE_L1, Payload(value="a"))
    core.handle(
        KEY, Event.HOME_ACQUIRE, Payload(branch=Guard.NOT_OWNED_BY_OTHER, version=1, owner_epoch=3)
    )
    core.handle(KEY, Event.WRITE_SETTLED, Payload(branch=Guard.PUBLISHED))
    core.handle(KEY, Event.WRITE_THROUGH, Payload(value="b"))
    core.handle(KEY, Event.HOME_COMMIT, Payload(branch=Guard.NOT_OWNED_BY_OTHER, version=2))
    assert core.state(KEY) is L1State.WT_A
    void = core.handle(KEY, Event.DELIVER_RECALL, Payload(owner_epoch=3))
    assert void.outcome is Outcome.VOIDED
    assert core.state(KEY) is L1State.WT_A
    with pytest.raises(ProtocolError, match="WT_A, event DELIVER_RECALL"):
        core.handle(KEY, Event.DELIVER_RECALL)  # untagged: taken at face value


def test_recall_for_the_current_grant_is_executed() -> None:
    """A recall tagged with the owner's current epoch runs the table's recall row."""
    core = AgentCore()
    core.handle(KEY, Event.WRITE_L1, Payload(value="a"))
    core.handle(
        KEY, Event.HOME_ACQUIRE, Payload(branch=Guard.NOT_OWNED_BY_OTHER, version=1, owner_epoch=3)
    )
    core.handle(KEY, Event.WRITE_SETTLED, Payload(branch=Guard.PUBLISHED))
    stale = core.decide(KEY, Event.DELIVER_RECALL, Payload(owner_epoch=2))
    assert isinstance(stale, Refusal)
    assert stale.kind is RefusalKind.NOT_APPLICABLE
    assert core.handle(KEY, Event.DELIVER_RECALL, Payload(owner_epoch=3)).target is L1State.MS_A


def test_hit_fast_path_matches_the_read_row() -> None:
    """hit() answers exactly what handle(READ) would for pure hit rows, and declines (None)
    where the table does more than return the copy: a miss, a missed connection, a tracer."""
    core = AgentCore()
    assert core.hit(KEY) is None
    fill(core, 4)
    core.load(KEY, dataclasses.replace(core.snapshot(KEY), floor=0))
    assert core.hit(KEY) == (4, "v4")
    assert core.snapshot(KEY).floor == 4
    core.handle(KEY, Event.DISCONNECT)
    assert core.hit(KEY) is None
    traced = AgentCore(tracer=lambda record: None)
    fill(traced, 1)
    assert traced.hit(KEY) is None


def test_hit_fast_path_follows_a_mutated_table() -> None:
    """A table whose S READ row does more than return the copy disables the fast path in S."""
    mutant = tuple(
        dataclasses.replace(r, effects=(Effect.RETURN_VALUE, Effect.REQUEST_FILL))
        if r.source is L1State.S and r.event is Event.READ
        else r
        for r in TABLE
    )
    core = AgentCore(table=mutant)
    fill(core, 1)
    assert core.hit(KEY) is None
    assert effects(core.handle(KEY, Event.READ)) == [Effect.RETURN_VALUE, Effect.REQUEST_FILL]


def test_mode_must_be_a_spec_mode() -> None:
    """A mode that is not a sagemem.spec.Mode is a ConfigurationError naming the value."""
    with pytest.raises(ConfigurationError, match="'strict'"):
        AgentCore("strict")  # type: ignore[arg-type]  # the wrong type is the point


def test_a_recalled_owner_whose_grant_lapsed_meanwhile_is_fenced_not_stuck() -> None:
    """An owner stalled past its lease (SIGSTOP) handles a queued recall, and its write-back
    finds the grant revoked: the write is reported fenced and the entry drops to I (it used to
    be an IMPOSSIBLE refusal that wedged the key)."""
    core = AgentCore()
    core.handle(KEY, Event.WRITE_L1, Payload(value="late"))
    core.handle(
        KEY, Event.HOME_ACQUIRE, Payload(branch=Guard.NOT_OWNED_BY_OTHER, version=2, owner_epoch=2)
    )
    core.handle(KEY, Event.WRITE_SETTLED, Payload(branch=Guard.PUBLISHED))
    recalled = core.handle(KEY, Event.DELIVER_RECALL, Payload(owner_epoch=2))
    assert recalled.target is L1State.MS_A
    fenced = core.handle(KEY, Event.HOME_WRITE_BACK, Payload(branch=Guard.GRANT_LOST))
    assert fenced.target is L1State.I
    assert effects(fenced) == [Effect.REPORT_FENCED]
    assert fenced.actions[-1] == Action(Effect.REPORT_FENCED, version=2, value="late")
    assert core.snapshot(KEY).owner_epoch is None


def test_an_update_moves_a_shared_copy_to_the_newer_version() -> None:
    """Write-update: a Shared holder installs a newer update's version and value and stays S;
    an older (late) one changes nothing but the floor it already has."""
    core = AgentCore()
    fill(core, 1)
    step = core.handle(KEY, Event.DELIVER_UPDATE, Payload(version=3, value="v3"))
    assert (step.source, step.target, step.actions) == (L1State.S, L1State.S, ())
    entry = core.snapshot(KEY)
    assert (entry.version, entry.value, entry.floor) == (3, "v3", 3)
    late = core.handle(KEY, Event.DELIVER_UPDATE, Payload(version=2, value="v2"))
    assert late.target is L1State.S
    entry = core.snapshot(KEY)
    assert (entry.version, entry.value, entry.floor) == (3, "v3", 3)
    assert core.handle(KEY, Event.READ).actions == (
        Action(Effect.RETURN_VALUE, version=3, value="v3"),
    )


def test_an_update_elsewhere_is_an_invalidation() -> None:
    """Without a Shared copy an update only raises the floor (I), and a fill in flight is
    marked invalidated (IS_D to IS_D_I), as an invalidation would."""
    core = AgentCore()
    step = core.handle(KEY, Event.DELIVER_UPDATE, Payload(version=4, value="v4"))
    assert step.target is L1State.I
    assert core.snapshot(KEY).floor == 4
    core.handle(KEY, Event.READ)
    racing = core.handle(KEY, Event.DELIVER_UPDATE, Payload(version=5, value="v5"))
    assert (racing.source, racing.target) == (L1State.IS_D, L1State.IS_D_I)


def test_an_update_needs_its_version_and_strict_mode_never_takes_one() -> None:
    """An update without a version is a ProtocolError; in strict mode (which never publishes
    updates) the table calls any update impossible."""
    core = AgentCore()
    fill(core, 1)
    with pytest.raises(ProtocolError, match="update's version and value"):
        core.handle(KEY, Event.DELIVER_UPDATE, Payload(value="v2"))
    strict = AgentCore(Mode.STRICT)
    fill(strict, 1)
    with pytest.raises(ProtocolError):
        strict.handle(KEY, Event.DELIVER_UPDATE, Payload(version=2, value="v2"))
    assert strict.snapshot(KEY).version == 1
