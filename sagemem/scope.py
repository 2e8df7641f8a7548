"""Capacity as capability: `AgentCapability` says what an agent may read and write, per tier and
per key prefix; `ScopedHierarchy` is the only view of a hierarchy such an agent is handed.

Labels. Every value is labelled by the tier it came from, and a read checks the reader's grant
against the label, wherever the value is cached:

- L3-labelled: the home (L3) and every copy of it, which is the protocol's L2 key space
  `sagemem:<ns>:*` (promotions, coherent fills) and the hierarchy's own L1. Readable only with
  `l3_read` (and the L3 read prefixes); the L2 copies are written only by agents that may write
  L3 (a copy is as authoritative as the home for the agents that read it).
- L2-labelled: the agents' shared scratch space, a separate L2 namespace `<ns>.l2` (Redis keys
  `sagemem:<ns>.l2:*`). Every scoped write at tier 1 goes there, so a restricted agent's L2
  write can never replace or hide an L3 value for anyone.
- The agent's own L1: private to this `ScopedHierarchy` (never the hierarchy's L1, which may
  hold L3 copies), holding only what this agent wrote at tier 0 or read under its grant. Over
  a coherent hierarchy (a `CoherentL1Tier` at tier 0) it never keeps L3-labelled values: the
  coherent L1 caches those and is invalidated by other agents' writes; this one is not.

Precedence (what `read` returns when a key exists at several tiers): the agent's own L1 first
(its cache and its tier-0 writes), then the L3-labelled value (the L2 copy of L3, then L3), then
the L2-labelled value, then the tiers after L3 (the semantic tier), each consulted only where
the grant allows reading that key. L3 outranks L2 so that a lower-privileged write never shadows
the global value for agents that can read it.

A read outside the grant returns None (invisible: no error, so no existence leak); a write or
delete outside it raises `ScopeViolationError` before anything is touched. Python cannot stop a
determined caller in the same process (it can reach any object through `gc` or frame
introspection), which is why `sagemem.grants` has the servers enforce the same grant: an agent's
process should hold only its restricted credentials. This module must never hand out the
hierarchy or a tier object through a public attribute or method.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from sagemem._lifecycle import AsyncResource
from sagemem.coherence.messages import check_agent_id
from sagemem.conflicts import ConflictPolicy
from sagemem.errors import (
    ClosedResourceError,
    ConfigurationError,
    ScopeViolationError,
)
from sagemem.hierarchy import MemoryHierarchy
from sagemem.tiers.base import Tier, TierEntry
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.values import (
    DERIVED_NAMESPACE_SUFFIX,
    KEY_LENGTH_MAX,
    JSONValue,
    check_key,
    check_namespace,
    encode_value,
)

__all__ = [
    "DRAM_INDEX",
    "L1_INDEX",
    "L2_INDEX",
    "L2_SPACE_SUFFIX",
    "L3_INDEX",
    "AgentCapability",
    "CapabilityError",
    "ScopeViolationError",
    "ScopedHierarchy",
]

L1_INDEX: Final = 0
L2_INDEX: Final = 1
L3_INDEX: Final = 2
DRAM_INDEX: Final = 3  # the semantic tier, after L3
TIER_INDEX_MAX: Final = 15
# The L2-labelled namespace of a hierarchy namespace `ns` is `ns + L2_SPACE_SUFFIX`.
L2_SPACE_SUFFIX: Final = DERIVED_NAMESPACE_SUFFIX
_TIER_NAMES: Final = {L1_INDEX: "L1", L2_INDEX: "L2", L3_INDEX: "L3", DRAM_INDEX: "DRAM"}


class CapabilityError(ConfigurationError):
    """An `AgentCapability` argument is malformed or contradicts itself."""


def tier_name(index: int) -> str:
    """The conventional name of tier `index` (L1, L2, L3, then DRAM for the semantic tier)."""
    return _TIER_NAMES.get(index, f"tier {index}")


def _check_tier_index(index: object, where: str) -> int:
    if type(index) is not int or not 0 <= index <= TIER_INDEX_MAX:
        raise CapabilityError(
            f"{where}: tier index {index!r} is invalid; use an int from 0 to {TIER_INDEX_MAX} "
            "(0=L1, 1=L2, 2=L3, 3=DRAM)"
        )
    return index


def _check_flag(name: str, value: object) -> bool | None:
    if value is not None and type(value) is not bool:
        raise CapabilityError(f"{name} must be True, False or None (follow `tiers`), got {value!r}")
    return value


def _check_prefixes(name: str, raw: object) -> Mapping[int, tuple[str, ...]]:
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, Mapping):
        raise CapabilityError(
            f"{name} must be a mapping from tier index to key prefixes, e.g. {{2: ('team:',)}}, "
            f"got {type(raw).__name__}: {raw!r:.80}"
        )
    result: dict[int, tuple[str, ...]] = {}
    for tier, prefixes in raw.items():
        index = _check_tier_index(tier, name)
        if isinstance(prefixes, str) or not isinstance(prefixes, Iterable):
            raise CapabilityError(
                f"{name}[{index}] must be a collection of key prefixes, got {prefixes!r:.80}; "
                f"wrap a single prefix in a tuple: {{{index}: ({prefixes!r:.40},)}}"
            )
        checked: list[str] = []
        for prefix in prefixes:
            if (
                type(prefix) is not str
                or len(prefix) > KEY_LENGTH_MAX
                or (prefix and not prefix.isprintable())
            ):
                raise CapabilityError(
                    f"{name}[{index}] holds {prefix!r:.80}, which is not a key prefix: use a str "
                    f"of printable characters, at most {KEY_LENGTH_MAX} long ('' means every key)"
                )
            checked.append(prefix)
        if not checked:
            raise CapabilityError(
                f"{name}[{index}] is empty, which would grant no key at all; remove tier "
                f"{index} from `tiers` instead (or use ('',) for every key)"
            )
        result[index] = tuple(sorted(set(checked)))
    return MappingProxyType(result)


class AgentCapability:
    """What one agent may do: which tiers it may use, and which keys at each tier.

    `tiers` is the set of tier indexes the agent may use at all (0=L1, 1=L2, 2=L3, 3=DRAM).
    `l3_read` / `l3_write` refine tier 2 (None: follow `tiers`); L3 write needs L3 read, because
    a write returns the new version and a compare-and-swap reveals the current one.
    `read_prefixes` / `write_prefixes` map a tier index to the key prefixes allowed there (a
    tier absent from the mapping allows every key), e.g. read `team:` at L3 but write only
    `agent:a:`: `read_prefixes={2: ("team:", "agent:a:")}, write_prefixes={2: ("agent:a:",)}`.
    Immutable and hashable; invalid arguments raise `CapabilityError` naming the bad value.
    """

    __slots__ = ("_hash", "l3_read", "l3_write", "read_prefixes", "tiers", "write_prefixes")

    _hash: int
    tiers: frozenset[int]
    l3_read: bool
    l3_write: bool
    read_prefixes: Mapping[int, tuple[str, ...]]
    write_prefixes: Mapping[int, tuple[str, ...]]

    def __init__(
        self,
        tiers: Iterable[int],
        l3_read: bool | None = None,
        l3_write: bool | None = None,
        *,
        read_prefixes: Mapping[int, Iterable[str]] | None = None,
        write_prefixes: Mapping[int, Iterable[str]] | None = None,
    ) -> None:
        if isinstance(tiers, str | bytes) or not isinstance(tiers, Iterable):
            raise CapabilityError(
                f"tiers must be a set of tier indexes such as {{0, 1}}, got {tiers!r:.80}"
            )
        tier_set = frozenset(_check_tier_index(index, "tiers") for index in tiers)
        has_l3 = L3_INDEX in tier_set
        read = _check_flag("l3_read", l3_read)
        write = _check_flag("l3_write", l3_write)
        read = has_l3 if read is None else read
        write = has_l3 if write is None else write
        for flag, value in (("l3_read", read), ("l3_write", write)):
            if value and not has_l3:
                raise CapabilityError(
                    f"{flag}=True but tier 2 (L3) is not in tiers={sorted(tier_set)}; add 2 to "
                    f"tiers or set {flag}=False"
                )
        if write and not read:
            raise CapabilityError(
                "l3_write=True needs l3_read=True: a write at L3 returns the new version and a "
                "compare-and-swap reveals the current one; grant l3_read, or drop l3_write"
            )
        reads = _check_prefixes("read_prefixes", read_prefixes)
        writes = _check_prefixes("write_prefixes", write_prefixes)
        for name, prefixes in (("read_prefixes", reads), ("write_prefixes", writes)):
            stray = sorted(set(prefixes) - tier_set)
            if stray:
                raise CapabilityError(
                    f"{name} names tiers {stray} that are not in tiers={sorted(tier_set)}; add "
                    "them to tiers or remove their prefixes"
                )
        set_attribute = object.__setattr__
        set_attribute(self, "tiers", tier_set)
        set_attribute(self, "l3_read", read)
        set_attribute(self, "l3_write", write)
        set_attribute(self, "read_prefixes", reads)
        set_attribute(self, "write_prefixes", writes)
        set_attribute(self, "_hash", hash(self._identity()))

    @classmethod
    def unrestricted(cls, tier_count: int = 4) -> AgentCapability:
        """Every key at tiers 0..tier_count-1 (what an unscoped hierarchy allows)."""
        return cls(tiers=range(tier_count))

    def _identity(self) -> tuple[object, ...]:
        return (
            self.tiers,
            self.l3_read,
            self.l3_write,
            tuple(sorted(self.read_prefixes.items())),
            tuple(sorted(self.write_prefixes.items())),
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"AgentCapability is immutable; build a new one instead of {name}=")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("AgentCapability is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AgentCapability):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        parts = [f"tiers={set(sorted(self.tiers)) or 'set()'}"]
        parts.append(f"l3_read={self.l3_read}, l3_write={self.l3_write}")
        if self.read_prefixes:
            parts.append(f"read_prefixes={dict(self.read_prefixes)}")
        if self.write_prefixes:
            parts.append(f"write_prefixes={dict(self.write_prefixes)}")
        return f"AgentCapability({', '.join(parts)})"

    def may_read(self, tier_index: int, key: str) -> bool:
        """Whether `key` at tier `tier_index` is inside the read grant."""
        if tier_index not in self.tiers or (tier_index == L3_INDEX and not self.l3_read):
            return False
        prefixes = self.read_prefixes.get(tier_index)
        return prefixes is None or key.startswith(prefixes)

    def may_write(self, tier_index: int, key: str) -> bool:
        """Whether writing or deleting `key` at tier `tier_index` is inside the grant."""
        if tier_index not in self.tiers or (tier_index == L3_INDEX and not self.l3_write):
            return False
        prefixes = self.write_prefixes.get(tier_index)
        return prefixes is None or key.startswith(prefixes)

    def describe_tier(self, tier_index: int) -> str:
        """The grant at one tier in words, for error messages and `sagemem grants list`."""
        name = f"tier {tier_index} ({tier_name(tier_index)})"
        if tier_index not in self.tiers:
            return f"{name}: no access"
        readable = tier_index != L3_INDEX or self.l3_read
        writable = tier_index != L3_INDEX or self.l3_write

        def keys(prefixes: tuple[str, ...] | None) -> str:
            return "every key" if prefixes is None else f"keys starting with {list(prefixes)}"

        read = f"read {keys(self.read_prefixes.get(tier_index))}" if readable else "no read"
        write = f"write {keys(self.write_prefixes.get(tier_index))}" if writable else "no write"
        return f"{name}: {read}, {write}"


class ScopedHierarchy(AsyncResource):
    """The view of a `MemoryHierarchy` that an agent with `capability` may use.

    The hierarchy's tiers are expected in the usual order: 0=L1 (plain or coherent), 1=L2,
    2=L3, then optional further tiers (DRAM). The view owns a private L1 (`l1_capacity`
    entries) and, unless `l2_space` is given (then it is borrowed), an `L2Tier` on the same
    Redis as the hierarchy's L2 in the namespace `<ns>.l2` (the L2-labelled space); it connects
    them on first use, and `aclose()` closes what it owns. The hierarchy itself stays borrowed.
    """

    __slots__ = (
        "__agent_id",
        "__capability",
        "__closed",
        "__connect_lock",
        "__connected",
        "__hierarchy",
        "__l2_space",
        "__own_l1",
        "__owns_l2_space",
    )

    def __init__(
        self,
        hierarchy: MemoryHierarchy,
        capability: AgentCapability,
        *,
        agent_id: str,
        l2_space: Tier | None = None,
        l1_capacity: int = 1024,
    ) -> None:
        if not isinstance(hierarchy, MemoryHierarchy):
            raise ConfigurationError(
                f"ScopedHierarchy needs a MemoryHierarchy, got {type(hierarchy).__name__}"
            )
        if not isinstance(capability, AgentCapability):
            raise ConfigurationError(
                f"ScopedHierarchy needs an AgentCapability, got {type(capability).__name__}: "
                f"{capability!r:.80}"
            )
        tiers = hierarchy.tiers
        if len(tiers) > L3_INDEX and tiers[L3_INDEX].name != "L3":
            raise ConfigurationError(
                f"ScopedHierarchy needs the L3 tier at index 2 (tiers L1, L2, L3, ...), but "
                f"tier 2 is {tiers[L3_INDEX].name!r}"
            )
        self.__agent_id: str = check_agent_id(agent_id)
        self.__capability: AgentCapability = capability
        self.__hierarchy: MemoryHierarchy = hierarchy
        self.__own_l1: L1Tier = L1Tier(capacity=l1_capacity)
        if l2_space is not None and not isinstance(l2_space, Tier):
            raise ConfigurationError(
                f"l2_space must implement the Tier interface, got {type(l2_space).__name__}"
            )
        self.__owns_l2_space: bool = l2_space is None
        self.__l2_space: Tier | None = (
            l2_space if l2_space is not None else self.__derive_l2_space(tiers)
        )
        self.__connect_lock: asyncio.Lock = asyncio.Lock()
        self.__connected: bool = False
        self.__closed: bool = False

    @staticmethod
    def __derive_l2_space(tiers: tuple[Tier, ...]) -> Tier | None:
        if len(tiers) <= L2_INDEX:
            return None
        shared = tiers[L2_INDEX]
        if not isinstance(shared, L2Tier):
            raise ConfigurationError(
                f"tier 1 of the hierarchy is a {type(shared).__name__}, not an L2Tier, so the "
                "L2-labelled space cannot be derived from it; pass l2_space=... explicitly"
            )
        namespace = check_namespace(shared.namespace + L2_SPACE_SUFFIX, derived=True)
        # The same server as the protocol's L2 (the URL argument, or None: env/embedded).
        return L2Tier(shared.redis_url, namespace=namespace, ttl_s=shared.ttl_s)

    # -- what the agent may know about itself ----------------------------------------------

    @property
    def agent_id(self) -> str:
        """The agent this view acts for (named in every `ScopeViolationError`)."""
        return self.__agent_id

    @property
    def capability(self) -> AgentCapability:
        """The (immutable) grant this view enforces."""
        return self.__capability

    def __repr__(self) -> str:
        return f"ScopedHierarchy(agent_id={self.__agent_id!r}, capability={self.__capability!r})"

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect the private L1 and the L2-labelled space (idempotent; done on first use)."""
        if self.__closed:
            raise ClosedResourceError("this ScopedHierarchy was closed with aclose()")
        if self.__connected:
            return
        async with self.__connect_lock:
            await self.__connect_locked()

    async def __connect_locked(self) -> None:
        if not self.__connected:
            await self.__own_l1.connect()
            if self.__l2_space is not None and L2_INDEX in self.__capability.tiers:
                await self.__l2_space.connect()
            self.__connected = True

    async def aclose(self) -> None:
        """Close the private L1 and the L2 space if this view created it (idempotent)."""
        if self.__closed:
            return
        self.__closed = True
        await self.__own_l1.aclose()
        if self.__owns_l2_space and self.__l2_space is not None:
            await self.__l2_space.aclose()

    # -- reads ------------------------------------------------------------------------------

    async def read(self, key: str) -> TierEntry | None:
        """The entry the agent may see for `key` (see the module's precedence), or None."""
        return await self.__lookup(check_key(key), promote=True)

    async def get(self, key: str, default: JSONValue = None) -> JSONValue:
        """The value the agent may see for `key`, or `default` (also when outside its grant)."""
        entry = await self.read(key)
        return default if entry is None else entry.value

    async def exists(self, key: str) -> bool:
        """Whether the agent can see a value for `key` (does not promote)."""
        return await self.__lookup(check_key(key), promote=False) is not None

    async def __lookup(self, key: str, *, promote: bool) -> TierEntry | None:
        await self.connect()
        capability = self.__capability
        own = self.__own_l1 if capability.may_read(L1_INDEX, key) else None
        if own is not None:
            entry = await own.read(key)
            if entry is not None:
                return entry
        entry = None
        if len(self.__hierarchy.tiers) > L3_INDEX and capability.may_read(L3_INDEX, key):
            entry = await self.__read_l3_labelled(key, promote=promote)
            if entry is not None and self.__hierarchy.coherent_l1 is not None:
                # The coherent L1 already caches it, and invalidates it when another agent
                # writes: a copy in the private L1 would never be invalidated (it would serve
                # the old value for ever), so it is not kept there.
                return entry
        if entry is None and self.__l2_space is not None and capability.may_read(L2_INDEX, key):
            entry = await self.__l2_space.read(key)
        if entry is None:
            for index in range(L3_INDEX + 1, len(self.__hierarchy.tiers)):
                if capability.may_read(index, key):
                    entry = await self.__hierarchy.tiers[index].read(key)
                    if entry is not None:
                        break
        if entry is not None and own is not None and promote:
            await own.fill(key, entry)
        return entry

    async def __read_l3_labelled(self, key: str, *, promote: bool) -> TierEntry | None:
        """L3's value for `key`: through the protocol (coherent L1), else its L2 copy, then L3."""
        hierarchy = self.__hierarchy
        coherent = hierarchy.coherent_l1
        if coherent is not None:
            return await coherent.read(key)
        capability = self.__capability
        use_copy = L2_INDEX in capability.tiers and len(hierarchy.tiers) > L2_INDEX
        if use_copy:
            entry = await hierarchy.tiers[L2_INDEX].read(key)
            if entry is not None:
                return entry
        entry = await hierarchy.tiers[L3_INDEX].read(key)
        # Only an agent that may write L3 may write its copies: a copy is trusted like L3.
        if entry is not None and promote and use_copy and capability.may_write(L3_INDEX, key):
            await hierarchy.tiers[L2_INDEX].fill(key, entry)
        return entry

    # -- writes -----------------------------------------------------------------------------

    def __violation(self, action: str, key: str, tier_index: int | None) -> ScopeViolationError:
        capability = self.__capability
        if tier_index is None:
            tiers = sorted(capability.tiers) or []
            grant = "; ".join(capability.describe_tier(index) for index in tiers) or "no tiers"
            where = "at any tier"
        else:
            grant = capability.describe_tier(tier_index)
            where = f"at tier {tier_index} ({tier_name(tier_index)})"
        return ScopeViolationError(
            f"agent {self.__agent_id!r} may not {action} key {key!r} {where}: its grant is "
            f"[{grant}]; nothing was changed. Use a tier and key its capability allows, or give "
            "the agent a capability that grants this"
        )

    def __check_index(self, tier_index: object) -> int:
        count = len(self.__hierarchy.tiers)
        if type(tier_index) is not int or not 0 <= tier_index < count:
            raise ConfigurationError(
                f"tier_index {tier_index!r} is out of range; the hierarchy has tiers 0..{count - 1}"
            )
        return tier_index

    async def set(self, key: str, value: JSONValue, tier_index: int = 0) -> int | None:
        """Write `value` at tier `tier_index` if the grant allows it, else raise
        `ScopeViolationError` (nothing changed). Tier 1 writes go to the L2-labelled space;
        returns the new L3 version for a write at L3, else None."""
        check_key(key)
        index = self.__check_index(tier_index)
        encode_value(value)
        if not self.__capability.may_write(index, key):
            raise self.__violation("write", key, index)
        await self.connect()
        if index == L1_INDEX:
            await self.__own_l1.write(key, value)
            return None
        await self.__own_l1.delete(key)
        if index == L2_INDEX:
            space = self.__l2_space
            if space is None:
                raise ConfigurationError("this hierarchy has no L2 tier, so no L2 space")
            await space.write(key, value)
            return None
        if index == L3_INDEX:
            return await self.__hierarchy.set(key, value, tier_index=L3_INDEX)
        # Past L3 the hierarchy would delete every faster copy (L3's too); write the tier only.
        return await self.__hierarchy.tiers[index].write(key, value)

    async def compare_and_swap(
        self,
        key: str,
        value: JSONValue,
        expected_version: int | None,
        *,
        on_conflict: ConflictPolicy = "reject",
        attempts: int = 10,
    ) -> int:
        """The hierarchy's compare-and-swap at L3, if the agent may read and write `key` there."""
        check_key(key)
        encode_value(value)
        capability = self.__capability
        if not (capability.may_write(L3_INDEX, key) and capability.may_read(L3_INDEX, key)):
            raise self.__violation("compare-and-swap", key, L3_INDEX)
        await self.connect()
        await self.__own_l1.delete(key)
        return await self.__hierarchy.compare_and_swap(
            key, value, expected_version, on_conflict=on_conflict, attempts=attempts
        )

    async def delete(self, key: str) -> bool:
        """Remove `key` from every tier the agent may write it at; True if any held it.

        Raises `ScopeViolationError` (nothing changed) if the grant allows writing `key` at no
        tier, or if the agent can see a value for `key` at a tier where it may not delete it
        (it would otherwise believe the key gone). A value the agent cannot see is left alone
        and never mentioned, so a delete reveals nothing outside the grant.
        """
        check_key(key)
        capability = self.__capability
        hierarchy = self.__hierarchy
        writable = [i for i in range(len(hierarchy.tiers)) if capability.may_write(i, key)]
        if not writable:
            raise self.__violation("delete", key, None)
        await self.connect()
        for index in range(len(hierarchy.tiers)):
            read_only = capability.may_read(index, key) and not capability.may_write(index, key)
            if read_only and await self.__visible_at(index, key):
                raise self.__violation("delete", key, index)
        removed = await self.__own_l1.delete(key)
        for index in sorted(writable, reverse=True):
            if index == L1_INDEX:
                continue
            if index == L2_INDEX:
                if self.__l2_space is not None:
                    removed = await self.__l2_space.delete(key) or removed
            elif index == L3_INDEX:
                coherent = hierarchy.coherent_l1
                if coherent is not None:
                    removed = await coherent.delete(key) or removed
                else:
                    removed = await hierarchy.tiers[L3_INDEX].delete(key) or removed
                    # The L3 copies (hierarchy L1, protocol L2) must not outlive the deletion.
                    for faster in hierarchy.tiers[:L3_INDEX]:
                        await faster.delete(key)
            else:
                removed = await hierarchy.tiers[index].delete(key) or removed
        return removed

    async def __visible_at(self, index: int, key: str) -> bool:
        """Whether the agent sees a value for `key` at tier `index` (which it may read)."""
        if index == L1_INDEX:
            return await self.__own_l1.exists(key)
        if index == L2_INDEX:
            return self.__l2_space is not None and await self.__l2_space.exists(key)
        if index == L3_INDEX:
            return await self.__read_l3_labelled(key, promote=False) is not None
        return await self.__hierarchy.tiers[index].exists(key)
