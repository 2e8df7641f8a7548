"""Coherence between agents' L1 caches: the bus's messages and events, and the bus itself.

Importing this package loads no driver: `CoherenceBus`, `Subscription`, `BusStatistics` and
`BusUnavailable` (which need redis) are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sagemem.coherence.messages import (
    BusEvent,
    BusHandler,
    Delivered,
    InvalidateMessage,
    MalformedMessage,
    Message,
    Missed,
    MissedReason,
    RecallMessage,
    Resynced,
    UpdateMessage,
)

__all__ = [
    "BusEvent",
    "BusHandler",
    "BusStatistics",
    "BusUnavailable",
    "CoherenceBus",
    "Delivered",
    "InvalidateMessage",
    "MalformedMessage",
    "Message",
    "Missed",
    "MissedReason",
    "RecallMessage",
    "Resynced",
    "Subscription",
    "UpdateMessage",
]

_LAZY = {
    name: "sagemem.coherence.bus"
    for name in ("BusStatistics", "BusUnavailable", "CoherenceBus", "Subscription")
}

if TYPE_CHECKING:
    from sagemem.coherence.bus import BusStatistics, BusUnavailable, CoherenceBus, Subscription


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sagemem.coherence' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
