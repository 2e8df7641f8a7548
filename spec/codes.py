"""The codes of the model's state fields: inbox messages, grants, requests, operations.

Shared by the interpreter (`model`), the statement of what guards and effects mean
(`meaning`) and every reader of those. Standard library only; no I/O.
"""

from __future__ import annotations

from enum import IntEnum, unique
from typing import Final

__all__ = [
    "GRANT_DEAD_INCARNATION",
    "GRANT_LIVE_INCARNATION",
    "NO_GRANT",
    "OP_NONE",
    "OP_READ",
    "OP_WRITE",
    "RECALL",
    "UPDATE_BASE",
    "Request",
    "is_update",
    "message_version",
]

RECALL: Final = 0  # inbox encoding: 0 is a recall, n >= 1 is "invalidate, version n committed"
UPDATE_BASE: Final = 64
"""Inbox encoding of write-update: UPDATE_BASE + n is "update: version n committed, with its
value" (the value is the one version n names: `names[n]`)."""


def message_version(message: int) -> int:
    """The version an invalidation or update message announces (0 for a recall)."""
    return message - UPDATE_BASE if message >= UPDATE_BASE else message


def is_update(message: int) -> bool:
    """Whether an inbox message is a write-update (else an invalidation or a recall)."""
    return message >= UPDATE_BASE


NO_GRANT: Final = 0
GRANT_LIVE_INCARNATION: Final = 1
GRANT_DEAD_INCARNATION: Final = 2


@unique
class Request(IntEnum):
    """What an agent's adapter is waiting for (set by REQUEST_*/AWAIT_* effects)."""

    NONE = 0
    FILL = 1
    DATA = 2
    COMMIT = 3
    ACQUIRE = 4
    SETTLE = 5
    WRITE_BACK = 6
    FLUSH = 7
    WAIT_OWNER = 8


OP_NONE: Final = 0
OP_READ: Final = 1
OP_WRITE: Final = 2
