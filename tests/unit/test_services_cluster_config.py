"""The embedded cluster's settings, record and status, checked without starting any server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sagemem.cli import main
from sagemem.errors import ConfigurationError, SageMemError
from sagemem.services import (
    RUNTIME_DIR_ENV,
    ClusterShape,
    ClusterStatus,
    ServerState,
    ServerStatus,
    ServicesStatus,
    cluster_shape_from_options,
)
from sagemem.services.redis_cluster import _ClusterNodeRecord, _ClusterRecord
from sagemem.services.redis_server import _RedisRecord
from sagemem.services.registry import _Record


@pytest.mark.parametrize(
    ("primaries", "replicas", "named", "fix"),
    [
        (2, 0, "--cluster 2", "--cluster 3"),
        (0, 0, "--cluster 0", "--cluster 3"),
        (17, 0, "--cluster 17", "--cluster 3"),
        (3, -1, "--replicas -1", "--replicas 1"),
        (3, 5, "--replicas 5", "--replicas 1"),
    ],
)
def test_a_shape_that_cannot_form_a_cluster_is_refused_with_the_value_and_the_fix(
    primaries: int, replicas: int, named: str, fix: str
) -> None:
    """Fewer than 3 or more than 16 primaries, or replicas outside 0-4, raise a
    ConfigurationError (a ValueError) naming the value and a shape that works."""
    with pytest.raises(ConfigurationError) as raised:
        ClusterShape(primaries, replicas)
    assert isinstance(raised.value, SageMemError)
    assert isinstance(raised.value, ValueError)
    assert named in str(raised.value)
    assert fix in str(raised.value)


def test_a_boolean_is_not_a_number_of_primaries() -> None:
    """`ClusterShape(True)` is refused: a bool is not a count."""
    with pytest.raises(ConfigurationError, match="--cluster True"):
        ClusterShape(True)


def test_replicas_without_a_cluster_are_refused() -> None:
    """`--replicas 1` alone names the missing `--cluster N`."""
    with pytest.raises(ConfigurationError) as raised:
        cluster_shape_from_options(None, 1)
    assert "--replicas 1" in str(raised.value)
    assert "--cluster 3" in str(raised.value)


def test_options_map_to_the_shape_asked_for() -> None:
    """No `--cluster` means no cluster; `--cluster 3` alone means no replicas."""
    assert cluster_shape_from_options(None, None) is None
    assert cluster_shape_from_options(3, None) == ClusterShape(3, 0)
    assert cluster_shape_from_options(4, 2) == ClusterShape(4, 2)
    assert ClusterShape(3, 1).node_count == 6


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (("--cluster", "2"), "--cluster 2"),
        (("--cluster", "3", "--replicas", "-1"), "--replicas -1"),
        (("--replicas", "1"), "--replicas 1 needs --cluster"),
    ],
)
def test_services_up_with_a_bad_shape_exits_2_and_starts_nothing(
    argv: tuple[str, ...],
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sagemem services up` with a bad --cluster/--replicas prints the error and the fix,
    exits 2 and does not even create its runtime directory."""
    runtime_dir = tmp_path / "run"
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(runtime_dir))
    status = main(["services", "up", *argv])
    captured = capsys.readouterr()
    assert status == 2
    assert named in captured.err
    assert captured.out == ""
    assert not runtime_dir.exists()


def _cluster_record() -> _ClusterRecord:
    nodes = (
        _ClusterNodeRecord(pid=101, port=16380, replica_of=None),
        _ClusterNodeRecord(pid=102, port=16381, replica_of=None),
        _ClusterNodeRecord(pid=103, port=16382, replica_of=None),
        _ClusterNodeRecord(pid=104, port=16383, replica_of=0),
        _ClusterNodeRecord(pid=105, port=16384, replica_of=1),
        _ClusterNodeRecord(pid=106, port=16385, replica_of=2),
    )
    return _ClusterRecord(shape=ClusterShape(3, 1), password="secret", nodes=nodes)


def test_the_record_keeps_a_cluster_beside_the_single_node() -> None:
    """A record with a single node and a cluster reads back equal, and the cluster's URL
    names its first primary."""
    record = _Record(_RedisRecord(pid=7, port=16379, password="pw"), None, _cluster_record())
    assert _Record.from_json(record.to_json()) == record
    assert _cluster_record().url == "redis://:secret@127.0.0.1:16380/0"


def test_a_malformed_cluster_entry_reads_as_no_cluster_and_keeps_the_rest() -> None:
    """A cluster entry with a bad node is dropped (its nodes are found by directory and
    stopped later); the single-node entry of the same record survives."""
    document = json.loads(_Record(_RedisRecord(7, 16379, "pw"), None, _cluster_record()).to_json())
    document["cluster"]["nodes"][2]["port"] = "16382"
    record = _Record.from_json(json.dumps(document))
    assert record.cluster is None
    assert record.redis == _RedisRecord(7, 16379, "pw")


def _status(redis: ServerState, cluster: ServerState | None) -> ServicesStatus:
    def server(name: str, state: ServerState) -> ServerStatus:
        absent = state is ServerState.ABSENT
        return ServerStatus(name, state, None if absent else 1, None if absent else "redis://x")

    cluster_status = (
        None
        if cluster is None
        else ClusterStatus(cluster, 3, 0, "redis://:pw@127.0.0.1:16380/0", ())
    )
    return ServicesStatus(
        Path("/run"),
        server("redis", redis),
        server("postgres", ServerState.RUNNING),
        cluster_status,
    )


@pytest.mark.parametrize(
    ("redis", "cluster", "running"),
    [
        (ServerState.RUNNING, None, True),
        (ServerState.ABSENT, None, False),
        (ServerState.ABSENT, ServerState.RUNNING, True),
        (ServerState.RUNNING, ServerState.RUNNING, True),
        (ServerState.STALE, ServerState.RUNNING, False),
        (ServerState.RUNNING, ServerState.STALE, False),
    ],
)
def test_status_counts_a_running_cluster_as_the_redis(
    redis: ServerState, cluster: ServerState | None, running: bool
) -> None:
    """With Postgres up, the services run when a Redis does (single node or cluster) and
    nothing recorded is stale."""
    assert _status(redis, cluster).running is running


def test_the_cluster_status_hides_the_password() -> None:
    """`repr()` of a cluster status shows the address without its password."""
    status = ClusterStatus(ServerState.RUNNING, 3, 0, "redis://:secret@127.0.0.1:16380/0", ())
    assert "secret" not in repr(status)
