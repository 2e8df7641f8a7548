"""Configuration rules of `sagemem.services`, checked without starting any server."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sagemem.errors import ConfigurationError, ServiceError
from sagemem.services import (
    POSTGRES_DSN_ENV,
    REDIS_URL_ENV,
    RUNTIME_DIR_ENV,
    EmbeddedServices,
    ServerState,
    ServerStatus,
    ServiceEndpoints,
    format_env_lines,
    postgres_server,
    redacted_url,
    redis_server,
    registry,
    resolve,
    resolve_postgres_dsn,
    resolve_redis_url,
    run_services_command,
)


class FakeEmbeddedServices:
    """Stands in for the embedded servers; counts how often each was asked for."""

    started: list[str] = []  # noqa: RUF012  # reset per test by the fixture below

    def __init__(self, runtime_dir: Path | None = None) -> None:
        self.runtime_dir = runtime_dir

    def ensure_redis(self) -> str:
        self.started.append("redis")
        return "redis://127.0.0.1:1/0"

    def ensure_postgres(self) -> str:
        self.started.append("postgres")
        return "postgresql://postgres:@/postgres?host=/tmp/fake"


@pytest.fixture
def fake_embedded(monkeypatch: pytest.MonkeyPatch) -> type[FakeEmbeddedServices]:
    """Replace the embedded servers with the fake and clear the SAGEMEM_* variables."""
    FakeEmbeddedServices.started = []
    monkeypatch.setattr(resolve, "EmbeddedServices", FakeEmbeddedServices)
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    monkeypatch.delenv(POSTGRES_DSN_ENV, raising=False)
    return FakeEmbeddedServices


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def test_explicit_url_wins_over_environment(
    fake_embedded: type[FakeEmbeddedServices], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit argument is returned even when the environment names other servers."""
    monkeypatch.setenv(REDIS_URL_ENV, "redis://env-host:6379/0")
    monkeypatch.setenv(POSTGRES_DSN_ENV, "postgresql://env-host/db")
    assert resolve_redis_url("redis://explicit:6379/1") == "redis://explicit:6379/1"
    assert resolve_postgres_dsn("postgresql://explicit/db") == "postgresql://explicit/db"
    assert fake_embedded.started == []


def test_environment_wins_over_embedded_servers(
    fake_embedded: type[FakeEmbeddedServices], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an argument the SAGEMEM_* variables are used and no server is started."""
    monkeypatch.setenv(REDIS_URL_ENV, "redis://env-host:6379/0")
    monkeypatch.setenv(POSTGRES_DSN_ENV, "postgresql://env-host/db")
    assert resolve_redis_url() == "redis://env-host:6379/0"
    assert resolve_postgres_dsn() == "postgresql://env-host/db"
    assert fake_embedded.started == []


def test_embedded_servers_are_used_when_nothing_is_configured(
    fake_embedded: type[FakeEmbeddedServices],
) -> None:
    """With no argument and no variable, each resolver asks the embedded servers once."""
    assert resolve_redis_url() == "redis://127.0.0.1:1/0"
    assert resolve_postgres_dsn() == "postgresql://postgres:@/postgres?host=/tmp/fake"
    assert fake_embedded.started == ["redis", "postgres"]


def test_empty_environment_variable_counts_as_unset(
    fake_embedded: type[FakeEmbeddedServices], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SAGEMEM_REDIS_URL=` (empty) falls through to the embedded server."""
    monkeypatch.setenv(REDIS_URL_ENV, "  ")
    assert resolve_redis_url() == "redis://127.0.0.1:1/0"
    assert fake_embedded.started == ["redis"]


@pytest.mark.parametrize("explicit", ["", "   "])
def test_empty_explicit_url_is_refused(
    fake_embedded: type[FakeEmbeddedServices], explicit: str
) -> None:
    """An empty explicit URL is a configuration mistake, not a request for the default."""
    with pytest.raises(ConfigurationError, match="empty"):
        resolve_redis_url(explicit)
    with pytest.raises(ConfigurationError, match="empty"):
        resolve_postgres_dsn(explicit)


def test_url_with_the_wrong_scheme_is_refused_naming_it(
    fake_embedded: type[FakeEmbeddedServices], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DSN given as the Redis URL (and the reverse) is refused with the offending value."""
    with pytest.raises(ConfigurationError, match=r"'postgresql://h/db'.*redis://"):
        resolve_redis_url("postgresql://h/db")
    monkeypatch.setenv(POSTGRES_DSN_ENV, "redis://h:6379/0")
    with pytest.raises(ConfigurationError, match=r"'redis://h:6379/0'.*postgresql://"):
        resolve_postgres_dsn()


def test_runtime_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`SAGEMEM_RUNTIME_DIR` picks the runtime directory; unset, a per-user one is used."""
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path / "rt"))
    assert tmp_path / "rt" == EmbeddedServices().runtime_dir
    monkeypatch.delenv(RUNTIME_DIR_ENV)
    assert f"sagemem-{os.geteuid()}" == EmbeddedServices().runtime_dir.parent.name


PASSWORD = "p" * 43  # the shape of the passwords sagemem generates


def write_record(
    runtime_dir: Path, *, redis_pid: int, postgres_pid: int, record_format: int = 2
) -> None:
    """Write a services record in the documented format (or, with `record_format=1`, in the
    format sagemem wrote before its servers required passwords)."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    redis: dict[str, object] = {"pid": redis_pid, "port": 1, "url": "redis://127.0.0.1:1/0"}
    dsn = f"postgresql://postgres:@/postgres?host={runtime_dir / 'pg'}"
    if record_format >= 2:
        redis |= {"password": PASSWORD, "url": f"redis://:{PASSWORD}@127.0.0.1:1/0"}
        dsn = f"postgresql://postgres:{PASSWORD}@/postgres?host={runtime_dir / 'pg'}"
    record = {
        "format": record_format,
        "redis": redis,
        "postgres": {"pid": postgres_pid, "pgdata": str(runtime_dir / "pg"), "dsn": dsn},
    }
    (runtime_dir / "services.json").write_text(json.dumps(record))


def test_record_with_dead_pids_is_reported_stale(tmp_path: Path) -> None:
    """A record whose processes are gone reads as stale, with the recorded pids."""
    pid = dead_pid()
    write_record(tmp_path, redis_pid=pid, postgres_pid=pid)
    status = EmbeddedServices(tmp_path).status()
    assert (ServerState.STALE, pid) == (status.redis.state, status.redis.pid)
    assert (ServerState.STALE, pid) == (status.postgres.state, status.postgres.pid)
    assert not status.running


def test_record_of_a_live_pid_that_does_not_answer_is_stale(tmp_path: Path) -> None:
    """A live pid is not enough: the server must answer at the recorded address as that pid."""
    write_record(tmp_path, redis_pid=os.getpid(), postgres_pid=os.getpid())
    status = EmbeddedServices(tmp_path).status()
    assert status.redis.state == ServerState.STALE
    assert status.postgres.state == ServerState.STALE


def test_record_without_passwords_counts_as_absent(tmp_path: Path) -> None:
    """A record from before the servers required passwords reads as no record, even with live
    pids: `up()` then stops what runs in the directory and starts servers with passwords."""
    write_record(tmp_path, redis_pid=os.getpid(), postgres_pid=os.getpid(), record_format=1)
    status = EmbeddedServices(tmp_path).status()
    assert (status.redis.state, status.postgres.state) == (ServerState.ABSENT, ServerState.ABSENT)


def test_stale_record_is_replaced_by_fresh_servers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`up()` on a stale record starts both servers again and records the new ones."""
    write_record(tmp_path, redis_pid=dead_pid(), postgres_pid=dead_pid())
    started: list[Path] = []

    def fake_start_redis(runtime_dir: Path) -> redis_server._RedisRecord:
        started.append(runtime_dir)
        return redis_server._RedisRecord(pid=os.getpid(), port=2, password=PASSWORD)

    def fake_start_postgres(runtime_dir: Path) -> postgres_server._PostgresRecord:
        started.append(runtime_dir)
        return postgres_server._PostgresRecord(
            pid=os.getpid(), pgdata="/nowhere", dsn="postgresql://x/y"
        )

    monkeypatch.setattr(registry, "_start_redis", fake_start_redis)
    monkeypatch.setattr(registry, "_start_postgres", fake_start_postgres)
    endpoints = EmbeddedServices(tmp_path).up()
    assert ServiceEndpoints(f"redis://:{PASSWORD}@127.0.0.1:2/0", "postgresql://x/y") == endpoints
    assert [tmp_path, tmp_path] == started
    recorded = json.loads((tmp_path / "services.json").read_text())
    assert (os.getpid(), 2) == (recorded["redis"]["pid"], recorded["redis"]["port"])
    assert os.getpid() == recorded["postgres"]["pid"]
    assert recorded["redis"]["password"] == PASSWORD


def test_record_is_readable_by_its_owner_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The record holds the passwords: it is written 0600 even under a permissive umask."""
    monkeypatch.setattr(
        registry,
        "_start_redis",
        lambda runtime_dir: redis_server._RedisRecord(pid=os.getpid(), port=2, password=PASSWORD),
    )
    (tmp_path / "services.json").write_text("{}")
    os.chmod(tmp_path / "services.json", 0o644)
    old_umask = os.umask(0)
    try:
        EmbeddedServices(tmp_path).ensure_redis()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(tmp_path / "services.json").st_mode) == 0o600


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{PASSWORD}@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
        (f"redis://default:{PASSWORD}@h:1/0", "redis://default:***@h:1/0"),
        (
            f"postgresql://postgres:{PASSWORD}@/postgres?host=/t",
            "postgresql://postgres:***@/postgres?host=/t",
        ),
        ("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0"),
        ("postgresql://postgres:@/postgres?host=/t", "postgresql://postgres:@/postgres?host=/t"),
    ],
)
def test_redacted_url_hides_only_the_password(url: str, shown: str) -> None:
    """`redacted_url` replaces the password by *** and leaves everything else as it was."""
    assert shown == redacted_url(url)


def test_reprs_and_messages_never_show_a_password(tmp_path: Path) -> None:
    """Endpoints, statuses and records print with the password hidden; so does a refused URL."""
    url = f"redis://:{PASSWORD}@127.0.0.1:1/0"
    dsn = f"postgresql://postgres:{PASSWORD}@/postgres?host=/t"
    shown = [
        repr(ServiceEndpoints(url, dsn)),
        repr(ServerStatus("redis", ServerState.RUNNING, 1, url)),
        repr(redis_server._RedisRecord(pid=1, port=1, password=PASSWORD)),
        repr(postgres_server._PostgresRecord(pid=1, pgdata="/t", dsn=dsn)),
    ]
    with pytest.raises(ConfigurationError) as refused:
        resolve_redis_url(f"http://:{PASSWORD}@h/")
    shown.append(str(refused.value))
    assert [text for text in shown if PASSWORD in text] == []


def test_unreadable_record_counts_as_absent(tmp_path: Path) -> None:
    """A truncated or foreign record file is treated as no record (and will be replaced)."""
    (tmp_path / "services.json").write_text('{"format": 1, "redis": {"pid": "x"')
    status = EmbeddedServices(tmp_path).status()
    assert status.redis.state == ServerState.ABSENT
    assert status.postgres.state == ServerState.ABSENT


def test_runtime_dir_too_long_for_a_socket_is_refused(tmp_path: Path) -> None:
    """A runtime directory whose Postgres socket path would be too long fails with the fix."""
    long_dir = tmp_path / ("d" * 100)
    with pytest.raises(ServiceError, match=RUNTIME_DIR_ENV):
        EmbeddedServices(long_dir).ensure_postgres()


@pytest.mark.parametrize(
    "endpoints",
    [
        ServiceEndpoints(
            f"redis://:{PASSWORD}@127.0.0.1:16379/0",
            f"postgresql://postgres:{PASSWORD}@/postgres?host=/t",
        ),
        ServiceEndpoints("redis://h:1/0?x=it's", 'postgresql://u:p@/d?host=/a dir/$HOME/"q"'),
    ],
)
def test_env_lines_parse_back_to_the_exact_values(endpoints: ServiceEndpoints) -> None:
    """Each printed line is one shell word `NAME=value` holding the value unchanged."""
    redis_line, postgres_line, export_line = format_env_lines(endpoints)
    assert [f"{REDIS_URL_ENV}={endpoints.redis_url}"] == shlex.split(redis_line)
    assert [f"{POSTGRES_DSN_ENV}={endpoints.postgres_dsn}"] == shlex.split(postgres_line)
    assert shlex.split(export_line) == ["export", REDIS_URL_ENV, POSTGRES_DSN_ENV]


def test_status_of_an_empty_runtime_dir_exits_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sagemem services status` with nothing recorded says so and exits 1."""
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path))
    assert run_services_command("status") == 1
    out = capsys.readouterr().out
    assert "redis: not started" in out
    assert "postgres: not started" in out


def test_status_of_a_stale_record_exits_1_and_says_stale(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stale record is reported as stale with its pid."""
    pid = dead_pid()
    write_record(tmp_path, redis_pid=pid, postgres_pid=pid)
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path))
    assert run_services_command("status") == 1
    out = capsys.readouterr().out
    assert f"redis: stale, pid {pid}, redis://:***@127.0.0.1:1/0" in out
    assert PASSWORD not in out


def test_down_with_nothing_running_exits_0(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`sagemem services down` is fine when nothing runs, also without a runtime directory."""
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path / "never-created"))
    assert run_services_command("down") == 0
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path))
    assert run_services_command("down") == 0


def test_unknown_action_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An action other than up, status or down is refused with the valid choices."""
    assert run_services_command("restart") == 2
    assert "up, status or down" in capsys.readouterr().err
