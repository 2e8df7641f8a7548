"""Shared Hypothesis strategies and settings for the property tests of the protocol spec.

The stateful machine over `sagemem.spec` draws, for each event, which agent it happens to and
which of that agent's variants (e.g. which message in its inbox) is taken. Both are small
integers so failures shrink to agent 0 and the first variant.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from sagemem.spec.model import ProtocolDefinition
from sagemem.spec.table import Rule
from sagemem.spec.vocabulary import Effect, Event, L1State, Mode

__all__ = [
    "MUTANT_SETTINGS",
    "PROTOCOL_SETTINGS",
    "agent_indexes",
    "random_testing_bounds",
    "variant_indexes",
    "without_stale_fill_fix",
]

# Sized so both modes run in well under a minute on 2 cores (see the test module docstring).
PROTOCOL_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# The bug-finding demonstration must not depend on luck or on the example database: a fixed
# seed (derandomize) and no database; scripts long enough for the 7-step race, short enough
# to shrink fast; the example budget is generous because the search stops at the first failure.
MUTANT_SETTINGS = settings(
    max_examples=2000,
    stateful_step_count=16,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

MAX_VARIANTS = 4


def random_testing_bounds(mode: Mode) -> ProtocolDefinition:
    """Bounds past the explorer's quick ones (random scripts need not enumerate the states):
    3 agents, 2 writes, up to 3 faults per run, every fault event."""
    return ProtocolDefinition(
        mode=mode, agents=3, writes=2, fault_budget=3, name=f"{mode.value}-random"
    )


def agent_indexes(defn: ProtocolDefinition) -> st.SearchStrategy[int]:
    """Which agent an event happens to (0-based; shrinks towards agent 0)."""
    return st.integers(min_value=0, max_value=defn.agents - 1)


def variant_indexes() -> st.SearchStrategy[int]:
    """Which of the agent's enabled variants of the event is taken (e.g. which message)."""
    return st.integers(min_value=0, max_value=MAX_VARIANTS - 1)


def without_stale_fill_fix(defn: ProtocolDefinition) -> ProtocolDefinition:
    """`defn` with the stale-fill fix removed from its table.

    The fix: an invalidation that reaches a fill in flight (IS_D) moves it to IS_D_I and is
    noted, so the fetched data is returned once and never cached. Without it the fill ignores
    the invalidation and installs the old version as a Shared copy nobody will invalidate.
    """

    def broken(rule: Rule) -> Rule:
        if rule.source is L1State.IS_D and rule.event is Event.DELIVER_INVALIDATE:
            effects = tuple(e for e in rule.effects if e is not Effect.NOTE_INVALIDATION)
            return dataclasses.replace(rule, target=L1State.IS_D, effects=effects)
        return rule

    table = tuple(broken(rule) for rule in defn.table)
    if table == defn.table:
        raise ValueError(
            "the table has no (IS_D, DELIVER_INVALIDATE) row to break; update "
            "without_stale_fill_fix to the table's current stale-fill fix"
        )
    return dataclasses.replace(defn, table=table, name=f"{defn.name}-without-stale-fill-fix")
