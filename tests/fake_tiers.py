"""An in-memory tier built for unit tests of the hierarchy logic (not a Redis or Postgres stand-in).

It counts its calls and can assign versions like a home store, so tests can see which tier was
touched and what version a promoted copy carries.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sagemem.tiers.base import TierEntry
from sagemem.values import JSONValue, check_key, decode_value, encode_value


class RecordingTier:
    """A dict-backed tier that records calls; `versioned=True` makes writes assign versions."""

    def __init__(self, name: str, *, versioned: bool = False) -> None:
        self.name = name
        self.versioned = versioned
        self.entries: dict[str, tuple[str, int | None]] = {}
        self.calls: list[tuple[str, str]] = []
        self.connected = 0
        self.closed = 0
        self._next_version = 0

    async def connect(self) -> None:
        self.connected += 1

    async def aclose(self) -> None:
        self.closed += 1

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

    async def read(self, key: str) -> TierEntry | None:
        self.calls.append(("read", key))
        stored = self.entries.get(key)
        return None if stored is None else TierEntry(decode_value(stored[0]), stored[1])

    async def write(self, key: str, value: JSONValue) -> int | None:
        self.calls.append(("write", key))
        version: int | None = None
        if self.versioned:
            self._next_version += 1
            version = self._next_version
        self.entries[check_key(key)] = (encode_value(value), version)
        return version

    async def fill(self, key: str, entry: TierEntry) -> None:
        self.calls.append(("fill", key))
        self.entries[check_key(key)] = (encode_value(entry.value), entry.version)

    async def delete(self, key: str) -> bool:
        self.calls.append(("delete", key))
        return self.entries.pop(key, None) is not None

    async def exists(self, key: str) -> bool:
        return key in self.entries

    async def clear(self) -> None:
        self.entries.clear()
