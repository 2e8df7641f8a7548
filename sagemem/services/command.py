"""The `sagemem services up|status|down` command."""

from __future__ import annotations

import os
import shlex
import sys

from sagemem.endpoints import redacted_url
from sagemem.errors import ServiceError

from .registry import EmbeddedServices
from .types import POSTGRES_DSN_ENV, REDIS_URL_ENV, ServerState, ServerStatus, ServiceEndpoints

__all__ = ["format_env_lines", "run_services_command"]


def format_env_lines(endpoints: ServiceEndpoints) -> list[str]:
    """Shell lines that set and export both variables, safe for `eval "$(sagemem services up)"`."""
    return [
        f"{REDIS_URL_ENV}={shlex.quote(endpoints.redis_url)}",
        f"{POSTGRES_DSN_ENV}={shlex.quote(endpoints.postgres_dsn)}",
        f"export {REDIS_URL_ENV} {POSTGRES_DSN_ENV}",
    ]


def _describe(server: ServerStatus) -> str:
    if server.state is ServerState.ABSENT:
        return f"{server.name}: not started"
    address = None if server.address is None else redacted_url(server.address)
    return f"{server.name}: {server.state.value}, pid {server.pid}, {address}"


def run_services_command(action: str) -> int:
    """Run `sagemem services <action>` on the default runtime directory; return the exit status.

    - `up`: start or reuse; print shell lines setting `SAGEMEM_REDIS_URL` and
      `SAGEMEM_POSTGRES_DSN` (and exporting them) on stdout, progress on stderr. 0, or 1 on error.
    - `status`: print each server's state, pid and address. 0 if both run, 1 if not (absent or
      stale), 2 on error.
    - `down`: stop both servers and verify they are gone. 0 (also if nothing ran), 1 on error.
    """
    services = EmbeddedServices()
    try:
        if action == "up":
            print(f"sagemem: embedded servers in {services.runtime_dir}", file=sys.stderr)
            endpoints = services.up()
            for name in (REDIS_URL_ENV, POSTGRES_DSN_ENV):
                if os.environ.get(name):
                    print(
                        f"sagemem: note: ${name} is already set in this shell and wins over "
                        "the embedded server until you eval these lines",
                        file=sys.stderr,
                    )
            print("\n".join(format_env_lines(endpoints)))
            return 0
        if action == "status":
            status = services.status()
            print(f"runtime directory: {status.runtime_dir}")
            print(_describe(status.redis))
            print(_describe(status.postgres))
            return 0 if status.running else 1
        if action == "down":
            services.down()
            print(f"sagemem: embedded servers in {services.runtime_dir} stopped", file=sys.stderr)
            return 0
    except ServiceError as error:
        print(f"sagemem services {action}: error: {error}", file=sys.stderr)
        return 2 if action == "status" else 1
    print(f"sagemem services: unknown action {action!r}; use up, status or down", file=sys.stderr)
    return 2
