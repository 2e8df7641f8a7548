"""`AsyncResource`: `async with` for every sagemem resource opened by `connect()`.

Subclasses implement `connect()` (idempotent) and `aclose()` (idempotent, releases what it can
even when it fails); this base turns them into `__aenter__`/`__aexit__` once. No I/O here.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["AsyncResource"]


class AsyncResource:
    """Base of resources used as `async with resource:` (connect on entry, aclose on exit)."""

    __slots__ = ()  # subclasses with slots (ScopedHierarchy) stay without an instance dict

    async def connect(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
