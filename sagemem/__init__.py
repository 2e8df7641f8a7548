"""sagemem: a memory hierarchy for teams of LLM agents with a formally checked coherence protocol.

Importing `sagemem` (or `sagemem.spec`) loads no driver: the public names below are imported
on first use (PEP 562), so the protocol specification stays importable without redis or asyncpg.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from sagemem import endpoints as _endpoints

__version__ = "0.1.0"

__all__ = [
    "AgentCapability",
    "ClosedResourceError",
    "CoherenceBus",
    "CoherentL1Tier",
    "ConfigurationError",
    "DRAMTier",
    "InvalidKeyError",
    "InvalidValueError",
    "L1State",
    "L1Tier",
    "L2Tier",
    "L3Tier",
    "MemoryHierarchy",
    "Mode",
    "OutcomeUnknown",
    "SageMemError",
    "ScopeViolationError",
    "ScopedHierarchy",
    "TierEntry",
    "TierUnavailable",
    "ValueTooLargeError",
    "VersionConflict",
    "connect",
]

_LAZY = {
    "AgentCapability": "sagemem.scope",
    "CoherenceBus": "sagemem.coherence.bus",
    "CoherentL1Tier": "sagemem.tiers.l1_coherent",
    "DRAMTier": "sagemem.tiers.dram",
    "L1State": "sagemem.spec.vocabulary",
    "L1Tier": "sagemem.tiers.l1",
    "L2Tier": "sagemem.tiers.l2",
    "L3Tier": "sagemem.tiers.l3",
    "Mode": "sagemem.spec.vocabulary",
    "MemoryHierarchy": "sagemem.hierarchy",
    "ScopedHierarchy": "sagemem.scope",
    "TierEntry": "sagemem.tiers.base",
    "connect": "sagemem.connection",
    **{
        name: "sagemem.errors"
        for name in (
            "ClosedResourceError",
            "ConfigurationError",
            "InvalidKeyError",
            "InvalidValueError",
            "OutcomeUnknown",
            "SageMemError",
            "ScopeViolationError",
            "TierUnavailable",
            "ValueTooLargeError",
            "VersionConflict",
        )
    },
}

if TYPE_CHECKING:
    from sagemem.coherence.bus import CoherenceBus
    from sagemem.connection import connect
    from sagemem.errors import (
        ClosedResourceError,
        ConfigurationError,
        InvalidKeyError,
        InvalidValueError,
        OutcomeUnknown,
        SageMemError,
        ScopeViolationError,
        TierUnavailable,
        ValueTooLargeError,
        VersionConflict,
    )
    from sagemem.hierarchy import MemoryHierarchy
    from sagemem.scope import AgentCapability, ScopedHierarchy
    from sagemem.spec.vocabulary import L1State, Mode
    from sagemem.tiers.base import TierEntry
    from sagemem.tiers.dram import DRAMTier
    from sagemem.tiers.l1 import L1Tier
    from sagemem.tiers.l1_coherent import CoherentL1Tier
    from sagemem.tiers.l2 import L2Tier
    from sagemem.tiers.l3 import L3Tier


def _embedded_fallback(kind: Literal["redis", "postgres"]) -> Callable[[], str]:
    """What a tier given no address connects to: `sagemem.services` (the SAGEMEM_* variables,
    then the embedded servers), injected here at the top so the tiers never import it."""

    def resolve() -> str:
        services = importlib.import_module("sagemem.services")
        if kind == "redis":
            return str(services.resolve_redis_url(None))
        return str(services.resolve_postgres_dsn(None))

    return resolve


for _kind in ("redis", "postgres"):
    if _kind not in _endpoints._fallbacks:
        _endpoints.set_fallback(_kind, _embedded_fallback(_kind))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sagemem' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
