"""Conflict policies of a compare-and-swap, and read-modify-write, over any store that offers a
single compare-and-swap, a read and an unconditional write (the coherent L1, or a hierarchy's
L3). One loop, so the policies mean the same everywhere. No I/O of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, cast

from sagemem.errors import InvalidValueError, VersionConflict
from sagemem.values import JSONValue, TierEntry, encode_value

__all__ = ["ConflictPolicy", "check_attempts", "check_policy", "swap_with_policy", "update"]

type ConflictPolicy = (
    Literal["reject", "last_writer_wins"] | Callable[[JSONValue, JSONValue], JSONValue]
)
"""What a compare-and-swap does when the store holds another version: raise, overwrite, or
merge (`merge(mine, theirs)`, theirs None if the key does not exist)."""

type SwapOnce = Callable[[JSONValue, int | None], Awaitable[int]]
type Read = Callable[[], Awaitable[TierEntry | None]]


def check_policy(policy: object) -> ConflictPolicy:
    """`policy` if it is one of the policies, else `InvalidValueError` saying which exist."""
    if policy in ("reject", "last_writer_wins") or callable(policy):
        return cast(ConflictPolicy, policy)
    raise InvalidValueError(
        "on_conflict must be 'reject', 'last_writer_wins' or a merge function "
        f"merge(mine, theirs) -> value, got {policy!r:.80}"
    )


def check_attempts(attempts: object) -> int:
    """`attempts` if it is a positive int, else `InvalidValueError`."""
    if type(attempts) is not int or attempts < 1:
        raise InvalidValueError(f"attempts must be a positive int, got {attempts!r}")
    return attempts


async def swap_with_policy(
    key: str,
    value: JSONValue,
    expected: int | None,
    policy: ConflictPolicy,
    attempts: int,
    *,
    swap_once: SwapOnce,
    read: Read,
    overwrite: Callable[[JSONValue], Awaitable[int]],
) -> int:
    """Compare-and-swap `value` at `expected`; on a conflict apply `policy` (a merge is
    swapped again against the version it merged with, up to `attempts` swaps)."""
    mine = value
    last: VersionConflict | None = None
    for _ in range(attempts):
        try:
            return await swap_once(mine, expected)
        except VersionConflict as conflict:
            last = conflict
            if policy == "reject":
                raise
            if policy == "last_writer_wins":
                return await overwrite(value)
            assert callable(policy)
            current = await read()
            if current is None and conflict.actual is not None:
                continue  # deleted meanwhile: read again
            mine = policy(value, None if current is None else current.value)
            encode_value(mine)
            expected = None if current is None else current.version
    assert last is not None
    raise last


async def update(
    fn: Callable[[JSONValue], JSONValue],
    default: JSONValue,
    attempts: int,
    *,
    swap_once: SwapOnce,
    read: Read,
    backoff: Callable[[int], Awaitable[None]] | None = None,
) -> int:
    """Read-modify-write: swap `fn(current)` (`default` if absent) against the version read,
    reading again after each conflict, up to `attempts` times; the last conflict is raised."""
    if not callable(fn):
        raise InvalidValueError(f"fn must be a function of the current value, got {fn!r:.80}")
    last: VersionConflict | None = None
    for attempt in range(attempts):
        current = await read()
        new = fn(default if current is None else current.value)
        encode_value(new)
        try:
            return await swap_once(new, None if current is None else current.version)
        except VersionConflict as conflict:
            last = conflict
            if backoff is not None:
                await backoff(attempt)
    assert last is not None
    raise last
