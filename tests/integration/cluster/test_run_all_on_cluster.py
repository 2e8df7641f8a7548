"""`python -m benchmarks.run_all` pointed at a Redis Cluster (SAGEMEM_REDIS_URL names a node):
every system measures there (the coherent ones too), counted over every primary and cleaned up
on every node."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from benchmarks.run_all import main
from sagemem.services import ServiceEndpoints
from tests.integration.cluster.conftest import LocalCluster

pytestmark = pytest.mark.cluster

SYSTEMS = (
    "sagemem-coherent",
    "sagemem-strict",
    "plain-hierarchy",
    "uncached-postgres",
    "broadcast-invalidation",
)


async def _bench_keys(url: str) -> list[bytes]:
    cluster = RedisCluster.from_url(url)
    try:
        await cluster.initialize()
        return [key async for key in cluster.scan_iter(match="*bench-all-*")]
    finally:
        await cluster.aclose()


def test_a_quick_run_on_a_cluster_measures_counts_and_cleans_every_node(
    valkey_cluster: LocalCluster,
    service_endpoints: ServiceEndpoints,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run exits 0 on the cluster, says so in its environment, counts the servers'
    commands over the primaries, and leaves none of its keys on any node."""
    monkeypatch.setenv("SAGEMEM_REDIS_URL", valkey_cluster.url)
    monkeypatch.setenv("SAGEMEM_POSTGRES_DSN", service_endpoints.postgres_dsn)
    before = set(asyncio.run(_bench_keys(valkey_cluster.url)))
    out = tmp_path / "results"
    argv = ["--quick", "--workloads", "read95-uniform", "--systems", ",".join(SYSTEMS)]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "a cluster of 3 primaries" in results["environment"]["redis_server"]
    cells = {cell["system"]: cell for cell in results["cells"]}
    assert sorted(cells) == sorted(SYSTEMS)
    for system in (
        "sagemem-coherent",
        "sagemem-strict",
        "plain-hierarchy",
        "broadcast-invalidation",
    ):
        assert cells[system]["problems"] == [], system
        assert cells[system]["redis_commands_per_op"] > 0, system  # summed over the primaries
    assert set(asyncio.run(_bench_keys(valkey_cluster.url))) <= before
