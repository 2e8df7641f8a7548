"""Random grants and random operation sequences: a scoped agent never reads a value it was not
allowed to see, and never changes a tier or key outside its grant (checked against a privileged
view of every tier before and after each operation). In-memory tiers keep it fast; the servers'
side of the same boundary is tested in tests/integration/test_scope_servers.py."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sagemem.errors import ScopeViolationError
from sagemem.hierarchy import MemoryHierarchy
from sagemem.scope import AgentCapability, ScopedHierarchy
from tests.fake_tiers import RecordingTier

KEYS = ("a:1", "a:2", "b:1", "b:2")
PREFIXES = ("a:", "b:", "")
# Where values live, as the privileged view sees them: the hierarchy's L1, the protocol's L2
# (L3-labelled copies), L3, and the L2-labelled space.
LOCATIONS = ("L1", "L2", "L3", "space")


@st.composite
def capabilities(draw: st.DrawFn) -> AgentCapability:
    """Any valid grant over tiers 0..2 with optional per-tier prefixes."""
    tiers = draw(st.frozensets(st.sampled_from((0, 1, 2))))
    l3_read = 2 in tiers and draw(st.booleans())
    l3_write = l3_read and draw(st.booleans())
    prefix_sets = st.frozensets(st.sampled_from(PREFIXES), min_size=1)
    read = draw(st.dictionaries(st.sampled_from(sorted(tiers)), prefix_sets)) if tiers else {}
    write = draw(st.dictionaries(st.sampled_from(sorted(tiers)), prefix_sets)) if tiers else {}
    return AgentCapability(
        tiers=tiers, l3_read=l3_read, l3_write=l3_write, read_prefixes=read, write_prefixes=write
    )


@dataclass(frozen=True)
class Operation:
    """One step: who acts (the scoped agent, or the unscoped hierarchy), what, on which key."""

    actor: str
    action: str
    key: str
    tier: int


operations = st.builds(
    Operation,
    actor=st.sampled_from(("scoped", "scoped", "hierarchy")),
    action=st.sampled_from(("get", "exists", "set", "delete")),
    key=st.sampled_from(KEYS),
    tier=st.sampled_from((0, 1, 2)),
)


def snapshot(tiers: dict[str, RecordingTier]) -> dict[tuple[str, str], tuple[str, int | None]]:
    """Every stored entry, by (location, key)."""
    return {
        (name, key): entry for name, tier in tiers.items() for key, entry in tier.entries.items()
    }


def readable(capability: AgentCapability, location: str, key: str) -> bool:
    """Whether the label of `location` lets the agent read `key` there."""
    if location == "space":
        return capability.may_read(1, key)
    if location in ("L3", "L2"):
        return capability.may_read(2, key)
    return False  # the hierarchy's own L1 belongs to the unscoped user


def writable(capability: AgentCapability, location: str, key: str) -> bool:
    """Whether the agent may change `key` at `location` (L3's copies go with L3)."""
    if location == "space":
        return capability.may_write(1, key)
    return capability.may_write(2, key)


async def run(capability: AgentCapability, steps: list[Operation]) -> None:
    tiers = {
        "L1": RecordingTier("L1"),
        "L2": RecordingTier("L2"),
        "L3": RecordingTier("L3", versioned=True),
        "space": RecordingTier("L2"),
    }
    hierarchy = MemoryHierarchy(tiers=[tiers["L1"], tiers["L2"], tiers["L3"]])
    agent = ScopedHierarchy(hierarchy, capability, agent_id="agent", l2_space=tiers["space"])
    counter = itertools.count()
    # Values the agent could legitimately have seen or written, per key (values are unique).
    allowed: dict[str, set[object]] = {key: set() for key in KEYS}

    def note_visible() -> None:
        for (location, key), (text, _) in snapshot(tiers).items():
            if readable(capability, location, key):
                allowed[key].add(text)

    for step in steps:
        note_visible()
        before = snapshot(tiers)
        if step.actor == "hierarchy":
            if step.action == "set":
                await hierarchy.set(step.key, f"h{next(counter)}", tier_index=step.tier)
            elif step.action == "delete":
                await hierarchy.delete(step.key)
            else:
                await hierarchy.get(step.key)
            continue
        if step.action in ("get", "exists"):
            if step.action == "get":
                value = await agent.get(step.key)
                if value is not None:
                    assert f'"{value}"' in allowed[step.key], (step, value, allowed)
            else:
                await agent.exists(step.key)
        else:
            value = f"s{next(counter)}"
            try:
                if step.action == "set":
                    await agent.set(step.key, value, tier_index=step.tier)
                    allowed[step.key].add(f'"{value}"')
                else:
                    await agent.delete(step.key)
            except ScopeViolationError:
                assert snapshot(tiers) == before, step
                if step.action == "set":
                    assert not capability.may_write(step.tier, step.key)
                continue
            if step.action == "set":
                assert capability.may_write(step.tier, step.key)
        after = snapshot(tiers)
        changed = {
            place for place in before.keys() | after.keys() if before.get(place) != after.get(place)
        }
        for location, key in changed:
            assert key == step.key, (step, location, key)
            assert writable(capability, location, key), (step, location, key, capability)
    await agent.aclose()


@settings(max_examples=200, deadline=None)
@given(capability=capabilities(), steps=st.lists(operations, max_size=25))
@example(  # the promotion leak: an L3 value promoted by the unscoped user
    capability=AgentCapability(tiers={0, 1}),
    steps=[
        Operation("hierarchy", "set", "a:1", 2),
        Operation("hierarchy", "get", "a:1", 0),
        Operation("scoped", "get", "a:1", 0),
    ],
)
@example(  # the shadowing leak: a tier-1 write by an agent that may not write L3
    capability=AgentCapability(tiers={1}),
    steps=[Operation("scoped", "set", "a:1", 1)],
)
def test_scoped_agent_never_reads_or_changes_outside_its_grant(
    capability: AgentCapability, steps: list[Operation]
) -> None:
    """No read returns a value outside the grant; no operation changes a tier or key outside it;
    a refused write or delete changes nothing at all."""
    asyncio.run(run(capability, steps))
