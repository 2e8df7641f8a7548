"""A catalogue of hand-written protocol bugs, each a named edit of the table, that the checkers
must reject with a readable counterexample.

The mutant generator (`proofs.mutants`) makes mechanical single-row changes; these are the bugs
a person would write (or did write, in production code the table does not drive): a stale fill,
a RESYNC that keeps the copy, an unfenced late write-back (also over a write-through), a strict
write that returns before the acks, an owner that keeps serving after its lease lapsed, a
transient state serving reads, a write-through over a live owner without a recall, a delete
that does not bump the version (ABA), a holder registered only after the fill read the data.

`check_bug` runs one bug through the explorer at the bug's (small) bounds in each of its modes,
and through its script if it has one (a `Scenario` that the real table plays to its expected
end and the bug must break). `check_bugs` is what `sagemem check` runs: every bug must be
rejected in every one of its modes. This module never edits the real table: each bug builds
new tuples passed as `ProtocolDefinition.table` / `.refusals`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sagemem.spec.model import ProtocolDefinition
from sagemem.spec.table import REFUSALS, TABLE, Refusal, Rule
from sagemem.spec.vocabulary import Effect, Event, Guard, L1State, Mode

from .report import CheckReport, Counterexample
from .scenarios import Move, Scenario, run_scenario

__all__ = [
    "BUGS",
    "Bug",
    "BugVerdict",
    "bug_definition",
    "check_bug",
    "check_bugs",
]

type Tables = tuple[tuple[Rule, ...], tuple[Refusal, ...]]
type Edit = Callable[[tuple[Rule, ...], tuple[Refusal, ...]], Tables]

_BOTH: frozenset[Mode] = frozenset(Mode)


@dataclass(frozen=True, slots=True)
class Bug:
    """A hand-written bug: `edit` turns (table, refusals) into the buggy pair.

    It must be rejected in every mode of `modes`: by the explorer at `agents` agents, `writes`
    writes and `fault_budget` faults, or by `script` (a scenario the real table passes).
    """

    name: str
    story: str
    edit: Edit
    modes: frozenset[Mode] = _BOTH
    agents: int = 2
    writes: int = 1
    fault_budget: int | None = 1
    script: Scenario | None = None


@dataclass(frozen=True, slots=True)
class BugVerdict:
    """What the checkers said about one bug in one mode."""

    bug: Bug
    mode: Mode
    rejected: bool
    checker: str = ""
    counterexample: Counterexample | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """One line for reports: the bug, the mode, who rejected it and why."""
        if not self.rejected or self.counterexample is None:
            return f"{self.bug.name} ({self.mode.value}): NOT REJECTED"
        cx = self.counterexample
        return (
            f"{self.bug.name} ({self.mode.value}): rejected by {self.checker}: "
            f"{cx.property_name} after {len(cx.steps)} steps"
        )


def _rows(
    match: Callable[[Rule], bool], change: Callable[[Rule], Rule | None]
) -> Callable[[tuple[Rule, ...]], tuple[Rule, ...]]:
    """Apply `change` to every row `match` selects (None deletes the row); at least one row."""

    def apply(table: tuple[Rule, ...]) -> tuple[Rule, ...]:
        out: list[Rule] = []
        hits = 0
        for rule in table:
            if match(rule):
                hits += 1
                changed = change(rule)
                if changed is not None:
                    out.append(changed)
            else:
                out.append(rule)
        if not hits:
            raise ValueError("a bug's edit matched no row of the table; update proofs/bugs.py")
        return tuple(out)

    return apply


def _table_only(*edits: Callable[[tuple[Rule, ...]], tuple[Rule, ...]]) -> Edit:
    def edit(table: tuple[Rule, ...], refusals: tuple[Refusal, ...]) -> Tables:
        for one in edits:
            table = one(table)
        return table, refusals

    return edit


def _without(effects: tuple[Effect, ...], *dropped: Effect) -> tuple[Effect, ...]:
    return tuple(e for e in effects if e not in dropped)


def _is(source: L1State, event: Event, guard: Guard | None = None) -> Callable[[Rule], bool]:
    return lambda r: r.source is source and r.event is event and guard in (None, r.guard)


def _strict_acks_skipped(table: tuple[Rule, ...], refusals: tuple[Refusal, ...]) -> Tables:
    settle = (L1State.WT_A, L1State.IM_A)
    rows = tuple(
        dataclasses.replace(r, guard=Guard.PUBLISHED)
        if r.source in settle and r.event is Event.WRITE_SETTLED and r.guard is Guard.ACKNOWLEDGED
        else r
        for r in table
    )
    kept = tuple(
        dataclasses.replace(f, guard=Guard.UNPUBLISHED)
        if f.source in settle and f.event is Event.WRITE_SETTLED and f.guard is Guard.UNACKNOWLEDGED
        else f
        for f in refusals
    )
    return rows, kept


def _mi_a_serves_reads(table: tuple[Rule, ...], refusals: tuple[Refusal, ...]) -> Tables:
    row = Rule(L1State.MI_A, Event.READ, Guard.ALWAYS, L1State.MI_A, (Effect.RETURN_VALUE,))
    kept = tuple(f for f in refusals if not (f.source is L1State.MI_A and f.event is Event.READ))
    return (*table, row), kept


def _commit_over_owner(table: tuple[Rule, ...]) -> tuple[Rule, ...]:
    commit = Event.HOME_COMMIT
    table = _rows(_is(L1State.WT_H, commit, Guard.OWNED_BY_OTHER), lambda r: None)(table)
    return _rows(
        _is(L1State.WT_H, commit, Guard.NOT_OWNED_BY_OTHER),
        lambda r: dataclasses.replace(r, guard=Guard.ALWAYS),
    )(table)


def _do(event: Event, agent: int | None = None) -> Move:
    return Move(event=event, agent=agent)


_LATE_WRITE_BACK_OVER_WRITE_THROUGH = Scenario(
    "late_write_back_over_a_write_through",
    "agent1 owns v1 (Modified); its lease lapses and the home revokes the grant (v2 keeps the "
    "old value); agent2 writes v3 through; then agent1's write-back arrives",
    agents=2,
    moves=(
        _do(Event.WRITE_L1, 1),
        _do(Event.HOME_ACQUIRE, 1),
        _do(Event.OUTBOX_RELAY),
        _do(Event.WRITE_SETTLED, 1),
        _do(Event.LEASE_LAPSE, 1),
        _do(Event.HOME_EXPIRE_OWNER, 1),
        _do(Event.WRITE_THROUGH, 2),
        _do(Event.HOME_COMMIT, 2),
        _do(Event.OUTBOX_RELAY),
        _do(Event.WRITE_SETTLED, 2),
        _do(Event.HOME_WRITE_BACK, 1),
    ),
    expect=lambda state: None if state.home == 3 and state.hval == state.names[3] else "lost v3",
)

BUGS: tuple[Bug, ...] = (
    Bug(
        "stale_fill",
        "an invalidation during a fill is ignored (no IS_D_I): the fill installs the old data",
        _table_only(
            _rows(
                _is(L1State.IS_D, Event.DELIVER_INVALIDATE),
                lambda r: dataclasses.replace(
                    r, target=L1State.IS_D, effects=_without(r.effects, Effect.NOTE_INVALIDATION)
                ),
            )
        ),
        modes=frozenset({Mode.COHERENT}),
    ),
    Bug(
        "resync_keeps_copy",
        "RESYNC after a detected loss keeps the Shared copy instead of dropping it",
        _table_only(
            _rows(
                _is(L1State.S, Event.RESYNC),
                lambda r: dataclasses.replace(
                    r, target=L1State.S, effects=_without(r.effects, Effect.DROP_COPY)
                ),
            )
        ),
    ),
    Bug(
        "unfenced_late_write_back",
        "a write-back whose grant was revoked is stored anyway (the statement lacks its fence)",
        _table_only(
            _rows(
                _is(L1State.MI_A, Event.HOME_WRITE_BACK, Guard.GRANT_LOST),
                lambda r: dataclasses.replace(r, effects=(Effect.HOME_STORE_UNFENCED,)),
            )
        ),
        writes=1,
    ),
    Bug(
        "unfenced_late_write_back_over_write_through",
        "as unfenced_late_write_back, played over a write-through that committed meanwhile",
        _table_only(
            _rows(
                _is(L1State.MI_A, Event.HOME_WRITE_BACK, Guard.GRANT_LOST),
                lambda r: dataclasses.replace(r, effects=(Effect.HOME_STORE_UNFENCED,)),
            )
        ),
        fault_budget=0,  # the explorer alone cannot reach it here: the script must reject it
        script=_LATE_WRITE_BACK_OVER_WRITE_THROUGH,
    ),
    Bug(
        "strict_write_completes_before_acks",
        "strict: a write returns once its invalidations are published, before the acks",
        _strict_acks_skipped,
        modes=frozenset({Mode.STRICT}),
    ),
    Bug(
        "lapsed_owner_keeps_serving",
        "an owner whose lease lapsed stops renewing but stays E/M and keeps serving reads",
        _table_only(
            _rows(
                lambda r: r.source in (L1State.E, L1State.M) and r.event is Event.LEASE_LAPSE,
                lambda r: dataclasses.replace(r, target=r.source, effects=(Effect.LEASE_LAPSED,)),
            )
        ),
    ),
    Bug(
        "transient_state_serves_reads",
        "MI_A (write-back in flight, lease lapsed, maybe expired by the home) serves reads",
        _mi_a_serves_reads,
        writes=2,
    ),
    Bug(
        "write_through_over_live_owner",
        "a write-through commits while another agent owns the key, without recalling it",
        _table_only(_commit_over_owner),
        writes=2,
        fault_budget=0,
    ),
    Bug(
        "delete_keeps_version",
        "a delete (a write-through of a tombstone) commits without a new version: ABA",
        _table_only(
            _rows(
                _is(L1State.WT_H, Event.HOME_COMMIT, Guard.NOT_OWNED_BY_OTHER),
                lambda r: dataclasses.replace(
                    r,
                    effects=tuple(
                        Effect.HOME_COMMIT_KEEP_VERSION if e is Effect.HOME_COMMIT_VERSION else e
                        for e in r.effects
                    ),
                ),
            )
        ),
        fault_budget=0,
    ),
    Bug(
        "holder_registered_after_read",
        "the fill script reads first and registers the holder only when the data arrives",
        _table_only(
            _rows(
                lambda r: r.event is Event.FILL_FETCH,
                lambda r: dataclasses.replace(
                    r, effects=_without(r.effects, Effect.DIRECTORY_ADD_HOLDER)
                ),
            ),
            _rows(
                _is(L1State.IS_D, Event.FILL_DATA, Guard.DATA_FRESH),
                lambda r: dataclasses.replace(r, effects=(Effect.DIRECTORY_ADD_HOLDER, *r.effects)),
            ),
        ),
        fault_budget=0,
    ),
)


def bug_definition(
    bug: Bug,
    mode: Mode,
    *,
    table: tuple[Rule, ...] = TABLE,
    refusals: tuple[Refusal, ...] = REFUSALS,
) -> ProtocolDefinition:
    """The definition of `bug` in `mode` at the bug's bounds (its edit applied to `table`)."""
    rows, kept = bug.edit(table, refusals)
    return ProtocolDefinition(
        mode=mode,
        table=rows,
        refusals=kept,
        agents=bug.agents,
        writes=bug.writes,
        fault_budget=bug.fault_budget,
        name=f"bug {bug.name}",
    )


def check_bug(bug: Bug, mode: Mode) -> BugVerdict:
    """Run `bug` in `mode` through the explorer, then its script: the first rejection wins."""
    from .explore import explore

    started = time.perf_counter()
    defn = bug_definition(bug, mode)
    report = explore(defn)
    if not report.ok and report.counterexample is not None:
        return BugVerdict(
            bug,
            mode,
            True,
            f"explore({defn.agents} agents, {defn.writes} writes, fault budget "
            f"{defn.fault_budget})",
            report.counterexample,
            time.perf_counter() - started,
        )
    if bug.script is not None and mode in bug.script.modes:
        counterexample = run_scenario(defn, bug.script)
        if counterexample is not None:
            return BugVerdict(
                bug,
                mode,
                True,
                f"script {bug.script.name}",
                counterexample,
                time.perf_counter() - started,
            )
    return BugVerdict(bug, mode, False, seconds=time.perf_counter() - started)


def check_bugs(mode: Mode, bugs: Sequence[Bug] = BUGS) -> CheckReport:
    """Every bug of `mode` must be rejected; the first one that is not fails the report."""
    started = time.perf_counter()
    chosen = [bug for bug in bugs if mode in bug.modes]
    summary: dict[str, int | float | str] = {"mode": mode.value, "bugs": len(chosen)}
    for bug in chosen:
        verdict = check_bug(bug, mode)
        if verdict.counterexample is not None:
            summary[bug.name] = (
                f"{verdict.counterexample.property_name}@{len(verdict.counterexample.steps)}"
            )
        if not verdict.rejected:
            summary["seconds"] = round(time.perf_counter() - started, 2)
            summary["not_rejected"] = bug.name
            return CheckReport(
                "hand-written bugs",
                False,
                summary,
                Counterexample(
                    property_name=f"bug {bug.name} is not rejected",
                    initial_state="",
                    steps=(),
                    explanation=f"{bug.story}: no checker rejects it in {mode.value} mode",
                ),
            )
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return CheckReport("hand-written bugs", True, summary)
