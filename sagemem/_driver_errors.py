"""Translation of driver exceptions into `TierUnavailable` at a tier's boundary.

The tier adapters catch their driver's exception types (they pass the tuple in, so this module
imports no driver) and raise the `TierUnavailable` built here, with the driver's exception
chained as `__cause__`. This module must never swallow an error or catch `CancelledError`.
"""

from __future__ import annotations

from sagemem.errors import ClosedResourceError, ScopeViolationError, TierUnavailable

__all__ = ["not_connected", "refused_by_server", "tier_unavailable"]

_DETAIL_LENGTH_MAX = 300


def tier_unavailable(
    tier: str, operation: str, error: BaseException, *, hint: str, key: str | None = None
) -> TierUnavailable:
    """A `TierUnavailable` naming the tier, the operation, the key and the driver's error.

    The caller raises it `from error`, so the driver's exception stays reachable as the cause.
    """
    detail = str(error) or "(no message)"
    if len(detail) > _DETAIL_LENGTH_MAX:
        detail = detail[:_DETAIL_LENGTH_MAX] + "..."
    target = f" of key {key!r}" if key is not None else ""
    return TierUnavailable(
        f"{tier} {operation}{target} failed: {type(error).__name__}: {detail}; {hint}",
        tier=tier,
    )


def refused_by_server(
    tier: str, operation: str, key: str | None, error: BaseException
) -> ScopeViolationError:
    """The error for a command the server refused for lack of permission (Redis NOPERM): the
    credentials in use belong to a grant (`sagemem.grants`) that does not cover it."""
    target = f" of key {key!r}" if key is not None else ""
    return ScopeViolationError(
        f"the server refused {tier} {operation}{target}: {error}; the credentials in use are "
        "a restricted grant's that do not allow it (see `sagemem grants list`), so nothing "
        "was changed"
    )


def not_connected(tier: str) -> ClosedResourceError:
    """The error for using a tier before `connect()` or after `aclose()`."""
    return ClosedResourceError(
        f"{tier} tier is not connected: call `await tier.connect()` first (or use "
        "`async with tier:`); a tier is also disconnected after `aclose()`"
    )
