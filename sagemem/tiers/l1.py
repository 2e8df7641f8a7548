"""L1: a per-agent, in-process LRU cache (the fastest tier; no I/O, no coherence).

Bounded by entry count and optionally by the bytes of the stored JSON text. Values are validated
like every tier's (`sagemem.values.encode_value`); immutable scalars (str, int, float, bool,
None) are kept as objects, so a hit returns them without copying, while containers are kept
serialised and every read returns a fresh copy, so a caller mutating a returned dict never
changes what is cached. For an L1 whose entries follow
the coherence protocol, see `sagemem.tiers.l1_coherent`.
"""

from __future__ import annotations

import marshal
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from sagemem._lifecycle import AsyncResource
from sagemem.errors import ConfigurationError
from sagemem.tiers.base import TierEntry
from sagemem.values import VALUE_SIZE_MAX_BYTES, JSONValue, check_key, encode_value

__all__ = ["L1Statistics", "L1Tier"]

_SCALARS: Final = (str, int, float, bool, type(None))


@dataclass(slots=True)
class _Slot:
    # Containers are kept as marshal bytes: a validated JSON value (dict, list, str, int, float,
    # bool, None) marshals and unmarshals to an equal value of the same types, about four times
    # faster than json.loads, so every hit returns a fresh copy cheaply. The bytes are made
    # here from values `encode_value` accepted and never come from outside the process.
    frozen: bytes
    entry: TierEntry | None  # kept for immutable scalars only: a hit then allocates nothing
    version: int | None
    size_bytes: int

    def read(self) -> TierEntry:
        if self.entry is not None:
            return self.entry
        value: JSONValue = marshal.loads(self.frozen)
        return TierEntry(value, self.version)


@dataclass(frozen=True, slots=True)
class L1Statistics:
    """A snapshot of one L1's counters."""

    entries: int
    size_bytes: int
    hits: int
    misses: int
    evictions: int


class L1Tier(AsyncResource):
    """An in-process LRU of at most `capacity` entries (and `size_max_bytes` bytes, if given).

    It holds no external resource: `connect()` and `aclose()` exist so it fits the `Tier`
    interface; `aclose()` drops every entry.
    """

    name = "L1"

    def __init__(
        self,
        capacity: int = 1024,
        *,
        size_max_bytes: int | None = None,
        value_size_max_bytes: int = VALUE_SIZE_MAX_BYTES,
    ) -> None:
        if type(capacity) is not int or capacity < 1:
            raise ConfigurationError(
                f"L1 capacity must be a positive int (entries), got {capacity!r}"
            )
        if size_max_bytes is not None and (type(size_max_bytes) is not int or size_max_bytes < 1):
            raise ConfigurationError(
                f"L1 size_max_bytes must be a positive int or None, got {size_max_bytes!r}"
            )
        self.capacity: Final = capacity
        self.size_max_bytes: Final = size_max_bytes
        self.value_size_max_bytes: Final = value_size_max_bytes
        self._entries: OrderedDict[str, _Slot] = OrderedDict()
        self._size_bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    # -- the Tier interface ---------------------------------------------------------------

    async def connect(self) -> None:
        """Nothing to connect: L1 lives in this process."""

    async def aclose(self) -> None:
        """Drop every entry (idempotent)."""
        self._entries.clear()
        self._size_bytes = 0

    async def read(self, key: str) -> TierEntry | None:
        """Return the cached entry for `key` (marking it most recently used), or None."""
        slot = self._entries.get(key)
        if slot is None:
            check_key(key)  # a hit proves the key was valid when stored; check only on a miss
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return slot.read()

    async def get(self, key: str, default: JSONValue = None) -> JSONValue:
        """Return the value cached for `key`, or `default` on a miss."""
        slot = self._entries.get(key)
        if slot is None:
            check_key(key)
            self._misses += 1
            return default
        self._entries.move_to_end(key)
        self._hits += 1
        return slot.read().value

    async def write(self, key: str, value: JSONValue) -> int | None:
        """Cache `value` for `key` with no home version; L1 assigns no versions."""
        self.put(key, value, version=None)
        return None

    async def set(self, key: str, value: JSONValue) -> None:
        """Cache `value` for `key`."""
        self.put(key, value, version=None)

    async def fill(self, key: str, entry: TierEntry) -> None:
        """Cache a copy read from a slower tier, keeping its version."""
        self.put(key, entry.value, version=entry.version)

    async def delete(self, key: str) -> bool:
        """Remove `key`; return whether it was cached."""
        check_key(key)
        slot = self._entries.pop(key, None)
        if slot is None:
            return False
        self._size_bytes -= slot.size_bytes
        return True

    async def exists(self, key: str) -> bool:
        """Whether `key` is cached (does not count as a hit or change the LRU order)."""
        check_key(key)
        return key in self._entries

    async def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._size_bytes = 0

    # -- synchronous core -----------------------------------------------------------------

    def put(self, key: str, value: JSONValue, *, version: int | None) -> None:
        """Validate and cache `value`, evicting least recently used entries to fit the bounds."""
        check_key(key)
        text = encode_value(value, size_max_bytes=self.value_size_max_bytes)
        size = len(text.encode("utf-8")) + len(key)
        if self.size_max_bytes is not None and size > self.size_max_bytes:
            raise ConfigurationError(
                f"entry {key!r} needs {size} bytes, more than this L1's size_max_bytes="
                f"{self.size_max_bytes}; raise size_max_bytes or write it to a slower tier"
            )
        if type(value) in _SCALARS:
            entry, frozen = TierEntry(value, version), b""
        else:
            entry, frozen = None, marshal.dumps(value)
        old = self._entries.pop(key, None)
        if old is not None:
            self._size_bytes -= old.size_bytes
        self._entries[key] = _Slot(frozen, entry, version, size)
        self._size_bytes += size
        self._evict_to_fit()

    def _evict_to_fit(self) -> None:
        while len(self._entries) > self.capacity or (
            self.size_max_bytes is not None and self._size_bytes > self.size_max_bytes
        ):
            _, slot = self._entries.popitem(last=False)
            self._size_bytes -= slot.size_bytes
            self._evictions += 1

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        """The cached keys, least recently used first."""
        return list(self._entries)

    def statistics(self) -> L1Statistics:
        """A snapshot of this L1's counters."""
        return L1Statistics(
            entries=len(self._entries),
            size_bytes=self._size_bytes,
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
        )
