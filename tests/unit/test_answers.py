"""The choices the driver used to make, now pure functions of facts (sagemem.coherence.answers).

Each is checked over its whole (small) input domain, and where the table has an opinion,
against the table: an expiry event must have a row in that state, a fetch branch must be one
the FILL_FETCH rows of the mode know, a commit's event one the WT_H rows answer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from sagemem.coherence.answers import (
    COPY_STATES,
    FillKind,
    StaleVerdict,
    TimeoutKind,
    acquire_verdict,
    commit_verdict,
    conflict_settles_first,
    deadline_after,
    expiry_event,
    fetch_verdict,
    first_event,
    lapses_first,
    loss_event,
    needs_ack_facts,
    owner_compare,
    parks,
    recall_is_repeat,
    relay_before_conflict,
    settle_guard,
    stale_data_verdict,
    timeout_error,
    trusted,
)
from sagemem.coherence.core import ABSENT
from sagemem.coherence.home import CommitAnswer, HomeRead
from sagemem.spec import REFUSALS, TABLE
from sagemem.spec.model import Request
from sagemem.spec.table import RefusalKind
from sagemem.spec.vocabulary import Effect, Event, Guard, L1State, Mode
from sagemem.tiers.base import TierEntry
from sagemem.values import JSONValue

ME = "me:0001"
OTHER = "other:0002"


@dataclass(frozen=True)
class Fill:
    kind: FillKind
    registered: bool = True
    entry: TierEntry | None = None
    lease_token: str | None = None


def _guards(mode: Mode, event: Event) -> set[Guard | None]:
    """The guards the mode's rows and (non-impossible) refusals of `event` name."""
    rows = {r.guard for r in TABLE if r.event is event and mode in r.modes}
    return rows | {
        f.guard
        for f in REFUSALS
        if f.event is event and mode in f.modes and f.kind is not RefusalKind.IMPOSSIBLE
    }


def _home(
    owner: str | None = None, lapsed: bool = False, outbox: int | None = None, version: int = 4
) -> HomeRead:
    return HomeRead(
        version=version, value={"v": version}, owner=owner, owner_lapsed=lapsed, outbox=outbox
    )


@pytest.mark.parametrize("mode", list(Mode))
def test_every_fetch_branch_is_one_the_tables_fill_rows_know(mode: Mode) -> None:
    """Over every combination of fill kind, owner, lapse and outbox, the verdict is a branch
    the mode's FILL_FETCH rows have, and the home is asked exactly when L2 missed."""
    known = _guards(mode, Event.FILL_FETCH)
    kinds = list(FillKind) if mode is Mode.STRICT else [FillKind.L2_HIT, FillKind.LEASED]
    for kind, owner, lapsed, outbox, registered in itertools.product(
        kinds, (None, ME, OTHER), (False, True), (None, 3), (False, True)
    ):
        entry = TierEntry({"l2": 1}, 2) if kind is FillKind.L2_HIT else None
        fill = Fill(kind, registered, entry, "lease" if kind is FillKind.LEASED else None)
        first = fetch_verdict(mode, ME, fill, None)
        assert first.read_home is (kind is FillKind.LEASED)
        verdict = (
            fetch_verdict(mode, ME, fill, _home(owner, lapsed, outbox))
            if first.read_home
            else first
        )
        assert not verdict.read_home
        assert verdict.payload is not None
        assert verdict.payload.branch in known, (mode, kind, verdict)


def test_a_fill_that_missed_l2_reads_the_home_and_a_lapsed_owner_is_expired() -> None:
    """FETCH_OWNED names the owner for the recall and expires it only if its lease lapsed."""
    fill = Fill(FillKind.LEASED, lease_token="t")
    live = fetch_verdict(Mode.COHERENT, ME, fill, _home(OTHER, lapsed=False))
    lapsed = fetch_verdict(Mode.COHERENT, ME, fill, _home(OTHER, lapsed=True))
    assert live.payload is not None
    assert live.payload.branch is Guard.FETCH_OWNED
    assert live.payload.owner_epoch == 4
    assert (live.owner, live.expire_owner) == (OTHER, None)
    assert (lapsed.owner, lapsed.expire_owner) == (OTHER, OTHER)


def test_the_agents_own_grant_is_not_another_owner() -> None:
    """A home row owned by this agent's own token reads as free (coherent) or settled."""
    fill = Fill(FillKind.LEASED, lease_token="t")
    coherent = fetch_verdict(Mode.COHERENT, ME, fill, _home(ME))
    strict = fetch_verdict(Mode.STRICT, ME, fill, _home(ME))
    assert coherent.payload is not None
    assert coherent.payload.branch is Guard.FETCH_FREE
    assert strict.payload is not None
    assert strict.payload.branch is Guard.FETCH_SETTLED
    assert coherent.payload.fill_lease == "t"
    assert (coherent.payload.version, coherent.payload.value, coherent.source) == (4, {"v": 4}, 2)


def test_a_pending_outbox_holds_a_strict_fill_back_and_is_relayed_but_not_a_coherent_one() -> None:
    """Strict: the outbox's version is relayed and the fill is FETCH_UNSETTLED; coherent reads."""
    fill = Fill(FillKind.LEASED, lease_token="t")
    strict = fetch_verdict(Mode.STRICT, ME, fill, _home(outbox=4))
    coherent = fetch_verdict(Mode.COHERENT, ME, fill, _home(outbox=4))
    assert strict.payload is not None
    assert strict.payload.branch is Guard.FETCH_UNSETTLED
    assert strict.relay == 4
    assert coherent.payload is not None
    assert coherent.payload.branch is Guard.FETCH_FREE
    assert coherent.relay is None


def test_an_l2_hit_carries_its_version_and_registration() -> None:
    """FETCH_L2_HIT returns L2's version and value; an unregistered hit is marked so."""
    hit = fetch_verdict(Mode.STRICT, ME, Fill(FillKind.L2_HIT, False, TierEntry([1], 7)), None)
    assert hit.payload is not None
    assert (hit.payload.branch, hit.payload.version, hit.payload.value) == (
        Guard.FETCH_L2_HIT,
        7,
        [1],
    )
    assert (hit.registered, hit.source) == (False, 1)
    with pytest.raises(ValueError, match="only a strict fill"):
        fetch_verdict(Mode.COHERENT, ME, Fill(FillKind.UNSETTLED, False), None)
    with pytest.raises(ValueError, match="without a versioned entry"):
        fetch_verdict(Mode.STRICT, ME, Fill(FillKind.L2_HIT, True, TierEntry([1], None)), None)


def test_commit_answers_map_to_the_rows_of_a_committing_write() -> None:
    """GRANT_LOST is HOME_CONFLICT; the other branches are HOME_COMMIT with the same branch,
    and only a lapsed other owner is expired."""
    wt_h = {(r.event, r.guard) for r in TABLE if r.source is L1State.WT_H}
    cases = [
        CommitAnswer(Guard.GRANT_LOST, 3, row_version=3),
        CommitAnswer(Guard.NOT_OWNED_BY_OTHER, 5, existed=True),
        CommitAnswer(Guard.OWNED_BY_OTHER, None, owner=OTHER, owner_lapsed=False, owner_epoch=2),
        CommitAnswer(Guard.OWNED_BY_OTHER, None, owner=OTHER, owner_lapsed=True, owner_epoch=2),
    ]
    verdicts = [commit_verdict(c) for c in cases]
    for case, verdict in zip(cases, verdicts, strict=True):
        assert (verdict.event, verdict.payload.branch) in wt_h, case
    assert [v.event for v in verdicts] == [Event.HOME_CONFLICT] + [Event.HOME_COMMIT] * 3
    assert [v.conflict for v in verdicts] == [True, False, True, True]
    assert [v.expire_owner for v in verdicts] == [None, None, None, OTHER]
    assert verdicts[1].payload.existed is True
    assert verdicts[2].payload.owner_epoch == 2
    with pytest.raises(ValueError, match="a commit answers"):
        commit_verdict(CommitAnswer(Guard.PUBLISHED, 1))


def test_an_acquires_reserved_version_is_its_grants_epoch() -> None:
    """A granted acquire carries version = epoch; a refused one the owner's epoch."""
    granted = acquire_verdict(CommitAnswer(Guard.NOT_OWNED_BY_OTHER, 9))
    refused = acquire_verdict(
        CommitAnswer(Guard.OWNED_BY_OTHER, None, owner=OTHER, owner_lapsed=True, owner_epoch=6)
    )
    assert (granted.payload.version, granted.payload.owner_epoch, granted.conflict) == (9, 9, False)
    assert (refused.payload.version, refused.payload.owner_epoch) == (None, 6)
    assert (refused.conflict, refused.expire_owner) == (True, OTHER)
    with pytest.raises(ValueError, match="an acquire answers"):
        acquire_verdict(CommitAnswer(Guard.GRANT_LOST, 1))


def test_a_write_settles_only_when_every_fact_says_so() -> None:
    """Coherent: the outbox alone; strict: outbox empty, no ack owed, directory old enough."""
    assert settle_guard(Mode.COHERENT, outbox_empty=True, acks_owed=True) is Guard.PUBLISHED
    assert settle_guard(Mode.COHERENT, outbox_empty=False) is Guard.UNPUBLISHED
    for empty, owed, age in itertools.product((False, True), (False, True), (0.5, 3.0)):
        guard = settle_guard(
            Mode.STRICT,
            outbox_empty=empty,
            acks_owed=owed,
            directory_age_s=age,
            directory_settled_s=2.0,
        )
        settled = empty and not owed and age >= 2.0
        assert guard is (Guard.ACKNOWLEDGED if settled else Guard.UNACKNOWLEDGED)
    for mode, empty in itertools.product(Mode, (False, True)):
        needed = needs_ack_facts(mode, outbox_empty=empty)
        assert needed is (mode is Mode.STRICT and empty)
        if not needed:  # the outbox alone decides: the directory's facts cannot change it
            for owed in (False, True):
                assert settle_guard(mode, outbox_empty=empty, acks_owed=owed) is settle_guard(
                    mode, outbox_empty=empty
                )
    assert _guards(Mode.STRICT, Event.WRITE_SETTLED) >= {
        Guard.ACKNOWLEDGED,
        Guard.UNACKNOWLEDGED,
    }


def test_stale_data_from_the_home_resets_and_from_l2_waits_within_the_bound() -> None:
    """The home's older data proves a bogus floor; L2's only once the sweep bound passed."""
    assert stale_data_verdict(source=2, stale_for_s=0.0, l2_limit_s=5.0) is StaleVerdict.RESET
    assert stale_data_verdict(source=1, stale_for_s=4.9, l2_limit_s=5.0) is StaleVerdict.WAIT
    assert stale_data_verdict(source=1, stale_for_s=5.1, l2_limit_s=5.0) is StaleVerdict.RESET


@pytest.mark.parametrize("mode", list(Mode))
def test_every_expiry_event_has_a_row_in_its_state(mode: Mode) -> None:
    """Cached states get EVICT (coherent S) or LEASE_LAPSE, and the table has that row."""
    rows = {(r.source, r.event) for r in TABLE if mode in r.modes}
    for state in L1State:
        event = expiry_event(mode, state)
        if state not in COPY_STATES:
            assert event is None
            continue
        assert event is not None
        assert (state, event) in rows, (mode, state, event)
        assert (event is Event.EVICT) is (state is L1State.S and mode is Mode.COHERENT)


def test_a_copy_is_trusted_before_its_deadline_and_a_strict_copy_only_over_a_heard_link() -> None:
    """The deadline bounds every copy; a strict S copy also needs a recently heard link."""
    common = {"now": 10.0, "deadline": 11.0, "link_trust_s": 2.0}
    assert trusted(Mode.COHERENT, L1State.S, link_heard_at=lambda: None, **common)
    assert trusted(Mode.STRICT, L1State.E, link_heard_at=lambda: None, **common)
    assert trusted(Mode.STRICT, L1State.S, link_heard_at=lambda: 9.0, **common)
    assert not trusted(Mode.STRICT, L1State.S, link_heard_at=lambda: 7.5, **common)
    assert not trusted(Mode.STRICT, L1State.S, link_heard_at=lambda: None, **common)
    late = {**common, "now": 11.0}
    assert not trusted(Mode.COHERENT, L1State.M, link_heard_at=lambda: None, **late)


def test_only_an_owner_past_its_deadline_lapses_before_a_message() -> None:
    """E/M past the deadline lapse first; S and transient states never."""
    for state in L1State:
        expected = state in (L1State.E, L1State.M)
        assert lapses_first(state, now=5.0, deadline=5.0) is expected
        assert not lapses_first(state, now=4.0, deadline=5.0)


def test_deadlines_follow_the_rows_effects() -> None:
    """A registered copy lives copy_life after its fill was sent, an unregistered one never;
    a grant owner_life; a written-back owner's kept copy no longer than a fresh one."""
    lives = {"copy_life_s": 54.0, "owner_life_s": 9.0, "fill_sent": 100.0, "now": 101.0}
    install = (Effect.INSTALL_COPY,)
    assert (
        deadline_after(install, L1State.IS_D, L1State.S, current=0.0, registered=True, **lives)
        == 154.0
    )
    assert (
        deadline_after(install, L1State.IS_D, L1State.S, current=0.0, registered=False, **lives)
        == 0.0
    )
    grant = (Effect.START_OWNER_LEASE,)
    assert (
        deadline_after(grant, L1State.IM_H, L1State.E, current=0.0, registered=True, **lives)
        == 109.0
    )
    assert (
        deadline_after((), L1State.MS_A, L1State.S, current=500.0, registered=True, **lives)
        == 155.0
    )
    assert deadline_after((), L1State.S, L1State.S, current=7.0, registered=True, **lives) == 7.0
    effects_used = {Effect.INSTALL_COPY, Effect.START_OWNER_LEASE}
    assert all(any(e in r.effects for r in TABLE) for e in effects_used)


@pytest.mark.parametrize(
    ("state", "version", "value", "expected", "result"),
    [
        (L1State.M, 3, "x", 3, (True, 3)),
        (L1State.M, 3, "x", 2, (False, 3)),
        (L1State.E, 3, ABSENT, None, (True, None)),
        (L1State.E, 3, ABSENT, 3, (False, None)),
        (L1State.S, 3, "x", 2, None),
        (L1State.I, -1, None, 1, None),
    ],
)
def test_the_owner_compares_its_own_copy_and_nobody_else_does(
    state: L1State,
    version: int,
    value: JSONValue,
    expected: int | None,
    result: tuple[bool, int | None] | None,
) -> None:
    """Owners decide a compare-and-swap on their copy (absent: None); others ask the home."""
    check = owner_compare(state, version, value, expected)
    assert (None if check is None else (check.matched, check.held)) == result


def test_operations_time_out_as_outcome_unknown_only_while_a_commit_is_in_flight() -> None:
    """Never guessed: a sent, unanswered COMMIT is OutcomeUnknown; an answered one (refused,
    the key owned by another) and any other request are unavailable."""
    for request in Request:
        for unanswered in (False, True):
            kind = timeout_error(request, commit_unanswered=unanswered)
            expected = request is Request.COMMIT and unanswered
            assert (kind is TimeoutKind.OUTCOME_UNKNOWN) is expected, (request, unanswered)


def test_small_decisions_of_the_driver() -> None:
    """Parking, recall repeats, strict conflicts and connection losses."""
    assert parks(waiting=False, failing_for_s=30.0, operation_timeout_s=30.0)
    assert not parks(waiting=True, failing_for_s=99.0, operation_timeout_s=30.0)
    assert not parks(waiting=False, failing_for_s=29.0, operation_timeout_s=30.0)
    assert recall_is_repeat((OTHER, 2), 1.0, (OTHER, 2), now=1.01, repeat_s=0.05)
    assert not recall_is_repeat((OTHER, 2), 1.0, (OTHER, 3), now=1.01, repeat_s=0.05)
    assert not recall_is_repeat((OTHER, 2), 1.0, (OTHER, 2), now=1.06, repeat_s=0.05)
    assert not recall_is_repeat(None, 0.0, (OTHER, 2), now=0.0, repeat_s=0.05)
    assert conflict_settles_first(Mode.STRICT, 3)
    assert not conflict_settles_first(Mode.STRICT, None)
    assert not conflict_settles_first(Mode.COHERENT, 3)
    assert relay_before_conflict(3, 3)
    assert relay_before_conflict(2, 3)
    assert not relay_before_conflict(4, 3)
    assert not relay_before_conflict(None, 3)
    assert first_event(known=False, disconnected=True) is Event.DISCONNECT
    assert first_event(known=True, disconnected=True) is None
    assert first_event(known=False, disconnected=False) is None
    assert loss_event(True) is Event.DROP_MESSAGE
    assert loss_event(False) is Event.DISCONNECT
