"""Configuration resolution, in one order everywhere: an explicit argument, else the environment
(`SAGEMEM_REDIS_URL`, `SAGEMEM_POSTGRES_DSN`), else the embedded servers (started or reused).
"""

from __future__ import annotations

import os
from typing import Final
from urllib.parse import urlsplit

from sagemem.endpoints import redacted_url
from sagemem.errors import ConfigurationError

from .registry import EmbeddedServices
from .types import POSTGRES_DSN_ENV, REDIS_URL_ENV

__all__ = ["resolve_postgres_dsn", "resolve_redis_url"]


_REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
_POSTGRES_SCHEMES: Final = frozenset({"postgresql", "postgres"})


def _check_url(value: str, *, what: str, schemes: frozenset[str], example: str) -> str:
    scheme = urlsplit(value).scheme.lower()
    if scheme not in schemes:
        raise ConfigurationError(
            f"{what} {redacted_url(value)!r} is not a {'/'.join(sorted(schemes))} URL; "
            f"use a URL such as {example!r}"
        )
    return value


def _explicit_or_env(explicit: str | None, env_name: str, what: str) -> str | None:
    if explicit is not None:
        if type(explicit) is not str or not explicit.strip():
            raise ConfigurationError(
                f"{what} {explicit!r} is empty or not a str; pass a URL, or None to use "
                f"${env_name} or the embedded server"
            )
        return explicit
    from_env = os.environ.get(env_name, "").strip()
    return from_env or None  # an empty variable counts as unset


def resolve_redis_url(explicit: str | None = None) -> str:
    """The Redis URL to use: `explicit`, else `$SAGEMEM_REDIS_URL`, else the embedded server.

    The embedded server is started (or reused) in the default runtime directory; this call
    blocks for up to a few seconds the first time and is cheap while the server runs.
    """
    url = _explicit_or_env(explicit, REDIS_URL_ENV, "Redis URL")
    if url is None:
        url = EmbeddedServices().ensure_redis()
    return _check_url(
        url, what="Redis URL", schemes=_REDIS_SCHEMES, example="redis://127.0.0.1:6379/0"
    )


def resolve_postgres_dsn(explicit: str | None = None) -> str:
    """The Postgres DSN to use: `explicit`, else `$SAGEMEM_POSTGRES_DSN`, else the embedded server.

    The embedded server is started (or reused) in the default runtime directory; this call
    blocks for up to a few seconds the first time and is cheap while the server runs.
    """
    dsn = _explicit_or_env(explicit, POSTGRES_DSN_ENV, "Postgres DSN")
    if dsn is None:
        dsn = EmbeddedServices().ensure_postgres()
    return _check_url(
        dsn,
        what="Postgres DSN",
        schemes=_POSTGRES_SCHEMES,
        example="postgresql://user:password@localhost:5432/dbname",
    )
