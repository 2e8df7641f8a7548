"""Where the servers are, for a tier or bus given no address: the layer below the tiers.

A tier, the bus or the directory created without a URL asks `resolve("redis")` (or
`"postgres"`) when it connects. This module does not know how servers are found or started:
the package's top (`sagemem/__init__.py`) registers `sagemem.services` (the environment
variables, then the embedded servers) with `set_fallback`, so the tiers never import upward.
A program may register its own fallback instead (tests do, to count calls).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from sagemem.errors import ConfigurationError

__all__ = ["Kind", "Resolver", "redacted_url", "resolve", "set_fallback"]

type Kind = Literal["redis", "postgres"]
type Resolver = Callable[[], str]
"""Blocking: returns the address to use (may start a server); run in a worker thread."""

_KINDS: Final[dict[str, str]] = {"redis": "Redis URL", "postgres": "Postgres DSN"}
_fallbacks: dict[str, Resolver] = {}


def set_fallback(kind: Kind, resolver: Resolver | None) -> Resolver | None:
    """Register what `resolve(kind)` calls (None unregisters); returns the one it replaces."""
    if kind not in _KINDS:
        raise ConfigurationError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    previous = _fallbacks.pop(kind, None)
    if resolver is not None:
        _fallbacks[kind] = resolver
    return previous


async def resolve(kind: Kind) -> str:
    """The address of the `kind` server from the registered fallback (in a worker thread)."""
    resolver = _fallbacks.get(kind)
    if resolver is None:
        raise ConfigurationError(
            f"no {_KINDS.get(kind, kind)} was given and no fallback is registered; pass the "
            "address, or import sagemem (which registers sagemem.services: the SAGEMEM_* "
            "variables, then the embedded servers)"
        )
    return await asyncio.to_thread(resolver)


def redacted_url(url: str) -> str:
    """`url` with its password (if any) replaced by `***`, for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
