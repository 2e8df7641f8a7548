"""The error hierarchy of sagemem: every exception the library raises derives from `SageMemError`.

Errors that resemble a builtin also inherit it (invalid values are `ValueError`s, scope
violations are `PermissionError`s), so callers can catch either. Driver exceptions (redis,
asyncpg, OSError) never escape raw: the tier adapters wrap them in `TierUnavailable` with the
cause chained. This module must never import a driver.
"""

from __future__ import annotations

__all__ = [
    "ClosedResourceError",
    "ConfigurationError",
    "InvalidKeyError",
    "InvalidValueError",
    "OutcomeUnknown",
    "ProtocolError",
    "SageMemError",
    "ScopeViolationError",
    "ServiceError",
    "TierUnavailable",
    "ValueTooLargeError",
    "VersionConflict",
]


class SageMemError(Exception):
    """Root of every error sagemem raises."""


class ConfigurationError(SageMemError, ValueError):
    """A setting (URL, DSN, capacity, namespace, ...) is missing or malformed."""


class InvalidKeyError(SageMemError, ValueError):
    """A key is not a non-empty string within the documented length and character rules."""


class InvalidValueError(SageMemError, ValueError):
    """A value would not read back equal to what was written (not JSON-compatible)."""


class ValueTooLargeError(InvalidValueError):
    """A value's JSON encoding exceeds the configured size limit."""

    def __init__(self, message: str, *, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(message)
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class ClosedResourceError(SageMemError, RuntimeError):
    """The resource was closed by its owner (you called `aclose()`), or was never connected."""


class TierUnavailable(SageMemError, ConnectionError):
    """A tier's server could not be reached or failed; the driver's exception is the cause."""

    def __init__(self, message: str, *, tier: str) -> None:
        super().__init__(message)
        self.tier = tier


class OutcomeUnknown(TierUnavailable):
    """A write's commit was sent but its answer could not be learned within the operation's
    bound (a server or the connection failed meanwhile): it may or may not have taken effect.

    Re-read the key to find out. The commit is never applied twice and a compare-and-swap
    never loses its version check: a later attempt of the same commit answers what the first
    did. `key` names the key.
    """

    def __init__(self, message: str, *, tier: str, key: str) -> None:
        super().__init__(message, tier=tier)
        self.key = key


class ServiceError(SageMemError, RuntimeError):
    """The embedded Redis or Postgres server could not be started, reused or stopped."""


class VersionConflict(SageMemError):
    """A compare-and-swap found a different version than the one expected.

    `expected` is the version the caller named (None: "must not exist yet"); `actual` is the
    version found at the home (None: the key does not exist or was deleted).
    """

    def __init__(self, key: str, *, expected: int | None, actual: int | None) -> None:
        want = "absent" if expected is None else f"version {expected}"
        have = "absent" if actual is None else f"version {actual}"
        super().__init__(
            f"compare-and-swap on key {key!r} expected {want} but found {have}; "
            "re-read the key and retry with the version you read"
        )
        self.key = key
        self.expected = expected
        self.actual = actual


class ScopeViolationError(SageMemError, PermissionError):
    """An agent tried to write or delete outside the tiers or keys its capability grants."""


class ProtocolError(SageMemError, RuntimeError):
    """The coherence protocol received an event its table does not allow in the current state."""
