"""The design note's examples as written (quickstart, coherence), on the session's real servers;
sagemem.connect()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sagemem
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1_coherent import CoherentL1Statistics, L1State

ROOT = Path(__file__).resolve().parents[2]

# The seed's quickstart, character for character except the two addresses, which are the
# servers this test session runs (the note's localhost addresses are placeholders), and the
# last three lines of main(), which hand what happened to the test and close the tiers.
SEED_QUICKSTART = """
import asyncio
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.hierarchy import MemoryHierarchy

async def main():
    l1 = L1Tier(capacity=128)
    l2 = L2Tier(url="redis://localhost:6379", namespace="myapp")
    l3 = L3Tier(dsn="postgresql://localhost/mydb")
    await l2.connect()
    await l3.connect()
    h = MemoryHierarchy(tiers=[l1, l2, l3])
    # Write to L3; read falls through L1 -> L2 -> L3, promotes on hit
    await h.set("fact:pi", 3.14159, tier_index=2)
    value = await h.get("fact:pi")  # L1 miss -> L2 miss -> L3 hit -> promotes to L1+L2
    value = await h.get("fact:pi")  # L1 hit
    RESULT.update(value=value, stats=h.statistics(), l1_keys=l1.keys())
    RESULT.update(l2_entry=await l2.read("fact:pi"), l3_entry=await l3.read("fact:pi"))
    await l2.delete("fact:pi"); await l3.delete("fact:pi"); await l2.aclose(); await l3.aclose()

asyncio.run(main())
"""


def test_seed_quickstart_runs_as_written(redis_url: str, postgres_dsn: str) -> None:
    """The quickstart writes at L3, the first read promotes into L1 and L2, the second hits L1."""
    source = SEED_QUICKSTART.replace("redis://localhost:6379", redis_url).replace(
        "postgresql://localhost/mydb", postgres_dsn
    )
    result: dict[str, object] = {}
    exec(
        compile(source, "seed_quickstart", "exec"), {"RESULT": result, "__name__": "seed"}
    )  # running the documented snippet is the point
    assert result["value"] == 3.14159
    stats = result["stats"]
    assert isinstance(stats, sagemem.hierarchy.HierarchyStatistics)
    assert [(t.name, t.hits, t.misses) for t in stats.tiers] == [
        ("L1", 1, 1),
        ("L2", 0, 1),
        ("L3", 1, 0),
    ]
    assert result["l1_keys"] == ["fact:pi"]
    assert isinstance(result["l3_entry"], TierEntry)
    assert result["l2_entry"] == result["l3_entry"]


async def test_connect_gives_a_ready_hierarchy_on_the_configured_servers(namespace: str) -> None:
    """sagemem.connect() builds L1 -> L2 -> L3 from the environment and closes what it made."""
    async with sagemem.connect(namespace=namespace) as memory:
        assert [tier.name for tier in memory.tiers] == ["L1", "L2", "L3"]
        version = await memory.set("belief:x", {"v": [1, 2]}, tier_index=2)
        assert version is not None
        assert await memory.get("belief:x") == {"v": [1, 2]}
        assert memory.statistics().tier("L3").hits == 1
        await memory.clear()
    with pytest.raises(sagemem.ClosedResourceError):
        await memory.get("belief:x")


def test_quickstart_demo_module_runs(redis_url: str, postgres_dsn: str) -> None:
    """`python -m demo.quickstart` (the README's first command) succeeds on these servers."""
    result = subprocess.run(
        [sys.executable, "-m", "demo.quickstart"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "second read: 3.14159  (L1 hit)" in result.stdout


# The seed's coherence example, character for character except the bus address (the session's
# server instead of the note's placeholder), a namespace of its own for this test run, the
# wrapping coroutine the note leaves out (its lines use `await`) and the lines after the last
# comment, which hand the observed states to the test, do the read the comment describes and
# close everything.
SEED_COHERENCE = """
from sagemem.coherence.bus import CoherenceBus
from sagemem.tiers.l1_coherent import CoherentL1Tier

async def main():
    bus = CoherenceBus(url="redis://localhost:6379")
    await bus.connect()
    l1_a = CoherentL1Tier(agent_id="agent-a", bus=bus)
    l1_b = CoherentL1Tier(agent_id="agent-b", bus=bus)
    await l1_a.start()  # subscribes to invalidation messages
    await l1_b.start()
    await l1_b.set("belief:x", "old value")   # Agent B caches a value
    await l1_a.set("belief:x", "new value")   # Agent A writes: broadcasts InvalidateMessage
    # l1_b's entry for "belief:x" is now Invalid; the next read by agent B re-fetches from L2/L3
    RESULT.update(b_state=l1_b.get_state("belief:x"), a_state=l1_a.get_state("belief:x"))
    RESULT.update(b_read=await l1_b.get("belief:x"), b_stats=l1_b.statistics())
    await l1_a.aclose(); await l1_b.aclose(); await bus.aclose()
"""


async def test_seed_coherence_example_runs_as_written(redis_url: str, namespace: str) -> None:
    """B caches (owns) a value; A's write recalls it and invalidates B; B's next read refetches
    A's value. The home is the default L3 on the session's Postgres (SAGEMEM_POSTGRES_DSN)."""
    source = SEED_COHERENCE.replace(
        'CoherenceBus(url="redis://localhost:6379")',
        f'CoherenceBus(url="{redis_url}", namespace="{namespace}")',
    )
    assert source != SEED_COHERENCE
    scope: dict[str, object] = {"RESULT": {}, "__name__": "seed"}
    exec(compile(source, "seed_coherence", "exec"), scope)  # the documented snippet is the point
    main = scope["main"]
    assert callable(main)
    await main()
    result = scope["RESULT"]
    assert isinstance(result, dict)
    assert result["b_state"] is L1State.I
    assert result["a_state"] is L1State.M
    assert result["b_read"] == "new value"
    stats = result["b_stats"]
    assert isinstance(stats, CoherentL1Statistics)
    assert stats.invalidations_received == 1
    assert stats.recalls_received == 1


async def test_connect_with_an_agent_id_gives_coherent_agents(namespace: str) -> None:
    """Two `sagemem.connect(agent_id=...)` hierarchies on one namespace stay coherent: a write
    through one invalidates the other's copy; closing closes the bus too."""
    async with (
        sagemem.connect(namespace=namespace, agent_id="a") as a,
        sagemem.connect(namespace=namespace, agent_id="b") as b,
    ):
        l1_a, l1_b = a.coherent_l1, b.coherent_l1
        assert isinstance(l1_a, sagemem.CoherentL1Tier)
        assert isinstance(l1_b, sagemem.CoherentL1Tier)
        await a.set("belief:x", "one", tier_index=2)
        assert await b.get("belief:x") == "one"
        await a.set("belief:x", "two", tier_index=2)
        assert await b.get("belief:x") == "two"
        assert l1_b.statistics().invalidations_received >= 1
        await a.delete("belief:x")
    assert not l1_a.bus.connected
    assert not l1_b.bus.connected
