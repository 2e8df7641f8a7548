"""`SageMemStore`: a LangGraph `BaseStore` over a coherent sagemem hierarchy (`sagemem[langgraph]`).

Each item is one sagemem key in the store's own sagemem namespace: the namespace tuple and the
item key as a JSON array of strings (`["users","42","prefs"]`), written with every character
that a sagemem key may not hold escaped as `\\uXXXX`, so distinct (namespace, key) pairs never
share a key and a namespace prefix is a key prefix. The stored value is a record holding the
item's value, its timestamps, its TTL and the number of its vectors. The hierarchy is the one
`sagemem.connect(namespace=..., agent_id=...)` builds (a coherent L1 over L2 and L3), so an
item cached by one store is invalidated when another store, in any process, writes it; every
write is committed at L3 (write-through), and `put(..., expected_version=...)` is a
compare-and-swap there.

With an `index` config, the texts at the configured fields are embedded with LangGraph's
embeddings and stored as rows of a `DRAMTier` (schema `sagemem_lg_d<dims>`, one row per text,
keyed `<item key>#<n>`); `search(query=...)` embeds the query, asks the semantic tier for the
nearest rows and scores each item by its best row (cosine similarity), as LangGraph's
`InMemoryStore` does. TTLs (minutes) are kept in the record: an expired item reads as absent,
and a read that refreshes the TTL rewrites the record by compare-and-swap (so the version it
returns is the refreshed one).

The sync half of `BaseStore` works from any thread, with or without a running event loop: all
I/O runs on one event loop in a daemon thread of this module, shared by every store of the
process, so the drivers' connections never cross loops. This module must never reach into
sagemem's tiers past their public methods.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
import weakref
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, Self, cast

from langgraph.store.base import (
    NOT_PROVIDED,
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    NotProvided,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
    validate_op_namespace,
)

import sagemem
from sagemem.coherence.home import HomeStore
from sagemem.coherence.messages import check_agent_id
from sagemem.errors import (
    ClosedResourceError,
    ConfigurationError,
    InvalidKeyError,
    InvalidValueError,
    VersionConflict,
)
from sagemem.hierarchy import MemoryHierarchy
from sagemem.tiers.base import TierEntry
from sagemem.tiers.dram import DRAMTier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import KEY_LENGTH_MAX, JSONValue, check_namespace

__all__ = [
    "ItemVersionConflict",
    "SageMemStore",
    "VersionedItem",
    "decode_item_key",
    "encode_item_key",
    "namespace_key_prefix",
]

_VECTOR_ROWS_MAX: Final = 1000  # DRAMTier.search returns at most this many rows
_FINALIZE_WAIT_S: Final = 10.0
_FILTER_OPERATORS: Final = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"})


class VersionedItem(Item):
    """An `Item` with the sagemem version it was read at (pass it as `expected_version`)."""

    __slots__ = ("version",)

    def __init__(
        self,
        *,
        value: dict[str, Any],
        key: str,
        namespace: tuple[str, ...],
        created_at: datetime,
        updated_at: datetime,
        version: int,
    ) -> None:
        super().__init__(
            value=value, key=key, namespace=namespace, created_at=created_at, updated_at=updated_at
        )
        self.version = version


class ItemVersionConflict(VersionConflict):
    """A versioned put found another version of the item than `expected_version` named."""

    def __init__(
        self,
        namespace: tuple[str, ...],
        key: str,
        *,
        expected: int | None,
        actual: int | None,
    ) -> None:
        super().__init__(encode_item_key(namespace, key), expected=expected, actual=actual)
        want = "absent" if expected is None else f"version {expected}"
        have = "absent" if actual is None else f"version {actual}"
        message = (
            f"put of item {key!r} in namespace {namespace!r} expected {want} but found {have}; "
            "re-read it with aget_versioned()/get_versioned() and retry with the version read"
        )
        self.args = (message,)
        self.namespace = namespace
        self.item_key = key


# -- keys ----------------------------------------------------------------------------------


def _quoted(text: str) -> str:
    """`text` as a JSON string literal whose characters are all printable (a valid key part)."""
    parts = ['"']
    for char in text:
        if char in '"\\':
            parts.append("\\" + char)
        elif char.isprintable():
            parts.append(char)
        else:
            code = ord(char)
            if code > 0xFFFF:  # JSON spells astral characters as a surrogate pair
                code -= 0x10000
                parts.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                parts.append(f"\\u{code:04x}")
    parts.append('"')
    return "".join(parts)


def namespace_key_prefix(namespace_prefix: tuple[str, ...]) -> str:
    """The prefix shared by the sagemem keys of every item under `namespace_prefix`."""
    return "[" + "".join(_quoted(label) + "," for label in namespace_prefix)


def encode_item_key(namespace: tuple[str, ...], key: str) -> str:
    """The sagemem key of item `key` in `namespace` (a JSON array of the labels and the key)."""
    return namespace_key_prefix(namespace) + _quoted(key) + "]"


def decode_item_key(stored: str) -> tuple[tuple[str, ...], str] | None:
    """The (namespace, key) a sagemem key encodes, or None for a key this store did not write."""
    if not stored.startswith("["):
        return None
    try:
        parts = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(parts, list) or len(parts) < 2:
        return None
    if not all(type(part) is str for part in parts):
        return None
    return tuple(parts[:-1]), parts[-1]


def _checked_item_key(namespace: tuple[str, ...], key: str) -> str:
    if type(key) is not str:
        raise InvalidKeyError(
            f"item key must be a str, got {type(key).__name__}: {key!r}; convert it with str()"
        )
    stored = encode_item_key(namespace, key)
    if len(stored) > KEY_LENGTH_MAX:
        raise InvalidKeyError(
            f"namespace {namespace!r} and key {key[:40]!r} encode to a sagemem key of "
            f"{len(stored)} characters; at most {KEY_LENGTH_MAX} fit: use shorter labels or keys"
        )
    return stored


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Record:
    """What one sagemem key holds for an item."""

    value: dict[str, Any]
    created_at: str
    updated_at: str
    ttl_minutes: float | None
    expires_at: float | None  # seconds since the epoch
    vectors: int

    def to_json(self) -> JSONValue:
        return {
            "value": cast(JSONValue, self.value),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "ttl_minutes": self.ttl_minutes,
            "expires_at": self.expires_at,
            "vectors": self.vectors,
        }

    @classmethod
    def from_json(cls, stored: JSONValue) -> _Record | None:
        if not isinstance(stored, dict) or not isinstance(stored.get("value"), dict):
            return None
        ttl = stored.get("ttl_minutes")
        expires = stored.get("expires_at")
        vectors = stored.get("vectors")
        return cls(
            value=cast(dict[str, Any], stored["value"]),
            created_at=str(stored.get("created_at")),
            updated_at=str(stored.get("updated_at")),
            ttl_minutes=float(ttl) if isinstance(ttl, int | float) else None,
            expires_at=float(expires) if isinstance(expires, int | float) else None,
            vectors=vectors if type(vectors) is int else 0,
        )

    def expired(self, now_s: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now_s

    def item(self, namespace: tuple[str, ...], key: str, version: int) -> VersionedItem:
        return VersionedItem(
            value=self.value,
            key=key,
            namespace=namespace,
            created_at=datetime.fromisoformat(self.created_at),
            updated_at=datetime.fromisoformat(self.updated_at),
            version=version,
        )


def _expires_at(ttl_minutes: float | None, now_s: float) -> float | None:
    return None if ttl_minutes is None else now_s + ttl_minutes * 60.0


def _check_ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if type(ttl) not in (int, float) or not 0 < cast(float, ttl) < float("inf"):
        raise InvalidValueError(f"ttl must be None or a positive number of minutes, got {ttl!r}")
    return float(cast(float, ttl))


# -- filters and namespace matching ----------------------------------------------------------


def _number(value: object) -> float | None:
    if type(value) in (int, float):
        return float(cast(float, value))
    return None


def _operator_holds(value: object, operator: str, operand: object) -> bool:
    if operator == "$eq":
        return value == operand
    if operator == "$ne":
        return value != operand
    left, right = _number(value), _number(operand)
    if left is None or right is None:
        return False
    if operator == "$gt":
        return left > right
    if operator == "$gte":
        return left >= right
    if operator == "$lt":
        return left < right
    return left <= right  # "$lte"


def _matches(value: object, condition: object) -> bool:
    """Whether a stored value satisfies one filter condition (equality, nesting, operators)."""
    if isinstance(condition, Mapping):
        operators = [name for name in condition if isinstance(name, str) and name.startswith("$")]
        if operators:
            for name, operand in condition.items():
                if name not in _FILTER_OPERATORS:
                    raise InvalidValueError(
                        f"filter operator {name!r} is not supported; use one of "
                        f"{sorted(_FILTER_OPERATORS)}"
                    )
                if not _operator_holds(value, name, operand):
                    return False
            return True
        if not isinstance(value, Mapping):
            return False
        return all(_matches(value.get(name), sub) for name, sub in condition.items())
    if isinstance(condition, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(condition)
            and all(_matches(v, c) for v, c in zip(value, condition, strict=True))
        )
    return value == condition


def _filter_holds(value: Mapping[str, Any], filter_: Mapping[str, Any] | None) -> bool:
    if not filter_:
        return True
    return all(_matches(value.get(name), condition) for name, condition in filter_.items())


def _namespace_matches(namespace: tuple[str, ...], condition: MatchCondition) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        labels = namespace[: len(path)]
    elif condition.match_type == "suffix":
        labels = namespace[len(namespace) - len(path) :]
    else:
        raise InvalidValueError(
            f"namespace match type {condition.match_type!r} is not supported; use 'prefix' or "
            "'suffix'"
        )
    return all(want in ("*", have) for want, have in zip(path, labels, strict=True))


def _check_window(limit: object, offset: object) -> tuple[int, int]:
    if type(limit) is not int or limit < 0:
        raise InvalidValueError(f"limit must be an int >= 0, got {limit!r}")
    if type(offset) is not int or offset < 0:
        raise InvalidValueError(f"offset must be an int >= 0, got {offset!r}")
    return limit, offset


# -- the event loop the sync half runs on ------------------------------------------------------


class _LoopThread:
    """One event loop in a daemon thread, started on first use, that runs every store's I/O."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.pending: set[asyncio.Task[None]] = set()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name="sagemem-langgraph", daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def run[T](self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop and wait for it (from any other thread)."""
        loop = self.loop()
        if self.in_loop_thread():
            coroutine.close()
            raise RuntimeError(
                "a SageMemStore's sync method was called on the store's own event loop thread; "
                "await its async counterpart (aget, aput, asearch, ...) there instead"
            )
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    async def arun[T](self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await `coroutine` on the loop from any event loop (cancellation is passed on)."""
        loop = self.loop()
        if asyncio.get_running_loop() is loop:
            return await coroutine
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, loop)
        return await asyncio.wrap_future(future)

    def close_soon(self, state: _Connected) -> None:
        """Close `state` on the loop (a store was garbage-collected or the interpreter exits).

        From another thread it waits up to `_FINALIZE_WAIT_S` for the close, so a script that
        never closed its store still says goodbye to the servers; on the loop's own thread it
        only schedules the close (waiting there would deadlock). Never raises.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def start() -> asyncio.Task[None]:
            task = loop.create_task(state.aclose())
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
            return task

        try:
            if self.in_loop_thread():
                loop.call_soon(start)
                return
            future = asyncio.run_coroutine_threadsafe(state.aclose(), loop)
            future.result(timeout=_FINALIZE_WAIT_S)
        except Exception:  # a finalizer must not raise; the servers drop the connections
            return


_LOOP: Final = _LoopThread()


# -- embeddings ------------------------------------------------------------------------------


class _EmbeddingsAdapter:
    """LangGraph's embeddings as a sagemem `Embedder` (for the semantic tier's writes)."""

    def __init__(self, embeddings: Any, dimensions: int) -> None:
        self._embeddings = embeddings
        self._dimensions = dimensions

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = await self._embeddings.aembed_documents(list(texts))
        return [[float(component) for component in vector] for vector in vectors]


@dataclass(slots=True)
class _Connected:
    """A store's open resources: the hierarchy, its home (L3) and the semantic tier."""

    hierarchy: MemoryHierarchy
    home: L3Tier
    semantic: DRAMTier | None
    closed: bool = False

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self.hierarchy.aclose()
        finally:
            if self.semantic is not None:
                await self.semantic.aclose()


class _Holder:
    """The mutable part a finalizer may close without keeping the store alive."""

    __slots__ = ("closed", "connected", "lock")

    def __init__(self) -> None:
        self.connected: _Connected | None = None
        self.lock: asyncio.Lock | None = None
        self.closed = False


def _finalize(holder: _Holder) -> None:
    connected = holder.connected
    holder.connected = None
    if connected is not None:
        _LOOP.close_soon(connected)


# -- the store -------------------------------------------------------------------------------


class SageMemStore(BaseStore):
    """A LangGraph `BaseStore` whose items live in a coherent sagemem hierarchy.

    Built like `InMemoryStore`: `SageMemStore()` or `SageMemStore(index=..., ttl=...)` uses
    the servers named by `redis_url` / `postgres_dsn`, else `SAGEMEM_REDIS_URL` /
    `SAGEMEM_POSTGRES_DSN`, else the embedded servers, and a fresh sagemem `namespace`
    unless one is given (stores that share a namespace share their items, coherently).
    `agent_id` names this store's coherent L1 (default: a fresh id). `index` is LangGraph's
    `IndexConfig` (`dims`, `embed`, `fields`); `ttl` is its `TTLConfig` (`default_ttl` and
    `refresh_on_read`; expired items read as absent). Nothing connects until the first
    operation. The store owns its connections: `close()` / `aclose()` (or `with` /
    `async with`) release them, and so does garbage collection. Beyond `BaseStore`:
    `aget_versioned` / `get_versioned`, and `aput` / `put` with `expected_version` (an int:
    the version read; None: only if absent), which raise `ItemVersionConflict` on a mismatch.
    """

    supports_ttl: bool = True

    def __init__(
        self,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        namespace: str | None = None,
        agent_id: str | None = None,
        redis_url: str | None = None,
        postgres_dsn: str | None = None,
        mode: Literal["coherent", "strict"] = "coherent",
    ) -> None:
        self.namespace: Final[str] = check_namespace(
            f"lg-{uuid.uuid4().hex}" if namespace is None else namespace
        )
        self.agent_id: Final[str] = check_agent_id(
            f"store-{uuid.uuid4().hex[:16]}" if agent_id is None else agent_id
        )
        self._redis_url = redis_url
        self._postgres_dsn = postgres_dsn
        self._mode = mode
        self.ttl_config = None if ttl is None else cast(TTLConfig, dict(ttl))
        if ttl is not None:
            _check_ttl(ttl.get("default_ttl"))
        self.index_config: IndexConfig | None = None
        self.embeddings: Any = None
        self._fields: list[tuple[str, str | list[str]]] = []
        self._dimensions = 0
        if index is not None:
            dims = index.get("dims")
            if type(dims) is not int or dims < 1:
                raise ConfigurationError(
                    f"index['dims'] must be a positive int (the embedding size), got {dims!r}"
                )
            self._dimensions = dims
            self.index_config = cast(IndexConfig, dict(index))
            self.embeddings = ensure_embeddings(index.get("embed"))
            self._fields = [
                (path, tokenize_path(path) if path != "$" else path)
                for path in (index.get("fields") or ["$"])
            ]
            self.index_config["__tokenized_fields"] = self._fields  # type: ignore[typeddict-unknown-key]
        self._holder = _Holder()
        self._finalizer = weakref.finalize(self, _finalize, self._holder)

    def __repr__(self) -> str:
        return f"SageMemStore(namespace={self.namespace!r}, agent_id={self.agent_id!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def _open(self) -> _Connected:
        holder = self._holder
        if holder.closed:
            raise ClosedResourceError(f"{self!r} was closed with close()/aclose()")
        if holder.connected is not None:
            return holder.connected
        if holder.lock is None:
            holder.lock = asyncio.Lock()
        async with holder.lock:
            already = self._holder_connected()  # another task may have connected meanwhile
            if already is not None:
                return already
            hierarchy = await sagemem.connect(
                redis_url=self._redis_url,
                postgres_dsn=self._postgres_dsn,
                namespace=self.namespace,
                agent_id=self.agent_id,
                mode=self._mode,
            )
            home = next(tier for tier in hierarchy.tiers if isinstance(tier, L3Tier))
            semantic = None
            try:
                if self.embeddings is not None:
                    semantic = DRAMTier(
                        self._postgres_dsn,
                        namespace=self.namespace,
                        schema=f"sagemem_lg_d{self._dimensions}",
                        embedder=_EmbeddingsAdapter(self.embeddings, self._dimensions),
                        text_of=lambda row: str(cast(dict[str, Any], row)["text"]),
                    )
                    await semantic.connect()
            except BaseException:
                await hierarchy.aclose()
                if semantic is not None:
                    await semantic.aclose()
                raise
            holder.connected = _Connected(hierarchy, home, semantic)
            return holder.connected

    def _holder_connected(self) -> _Connected | None:
        return self._holder.connected

    async def _aclose_here(self) -> None:
        holder = self._holder
        holder.closed = True
        connected, holder.connected = holder.connected, None
        if connected is not None:
            await connected.aclose()

    async def aclose(self) -> None:
        """Close the store's connections (idempotent); later operations raise."""
        await _LOOP.arun(self._aclose_here())
        self._finalizer.detach()

    def close(self) -> None:
        """`aclose()` for sync code."""
        _LOOP.run(self._aclose_here())
        self._finalizer.detach()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def hierarchy(self) -> MemoryHierarchy:
        """The sagemem hierarchy under the store (connected by the first operation)."""
        connected = self._holder.connected
        if connected is None:
            raise ClosedResourceError(
                f"{self!r} has not connected yet (it connects on its first operation)"
            )
        return connected.hierarchy

    # -- BaseStore ---------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run `ops` (reads see the state before this batch's writes; the last write wins)."""
        checked = self._checked_ops(ops)
        return _LOOP.run(self._run_batch(checked))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Async `batch`."""
        checked = self._checked_ops(ops)
        return await _LOOP.arun(self._run_batch(checked))

    @staticmethod
    def _checked_ops(ops: Iterable[Op]) -> list[Op]:
        checked = list(ops)
        for op in checked:
            if not isinstance(op, GetOp | PutOp | SearchOp | ListNamespacesOp):
                raise InvalidValueError(
                    f"unknown store operation {op!r}; use GetOp, PutOp, SearchOp or "
                    "ListNamespacesOp"
                )
            validate_op_namespace(op)
            if isinstance(op, GetOp | PutOp):
                _checked_item_key(op.namespace, op.key)
            if isinstance(op, PutOp):
                if not op.namespace:
                    raise InvalidNamespaceError("Namespace cannot be empty.")
                _check_ttl(op.ttl)
            if isinstance(op, SearchOp):
                _check_window(op.limit, op.offset)
            if isinstance(op, ListNamespacesOp):
                _check_window(op.limit, op.offset)
        return checked

    async def _run_batch(self, ops: list[Op]) -> list[Result]:
        connected = await self._open()
        results: list[Result] = []
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:
            if isinstance(op, GetOp):
                results.append(await self._get(connected, op.namespace, op.key, op.refresh_ttl))
            elif isinstance(op, SearchOp):
                results.append(await self._search(connected, op))
            elif isinstance(op, ListNamespacesOp):
                results.append(await self._list_namespaces(connected, op))
            else:
                puts[(op.namespace, op.key)] = op
                results.append(None)
        for op in puts.values():
            if op.value is None:
                await self._delete(connected, op.namespace, op.key)
            else:
                await self._put(connected, op, NOT_PROVIDED)
        return results

    # -- versions (the extension) --------------------------------------------------------------

    async def aget_versioned(
        self, namespace: tuple[str, ...], key: str, *, refresh_ttl: bool | None = None
    ) -> VersionedItem | None:
        """The item with the version it was read at (`item.version`), or None."""
        item = await self.aget(namespace, key, refresh_ttl=refresh_ttl)
        return cast(VersionedItem | None, item)

    def get_versioned(
        self, namespace: tuple[str, ...], key: str, *, refresh_ttl: bool | None = None
    ) -> VersionedItem | None:
        """Sync `aget_versioned`."""
        return cast(VersionedItem | None, self.get(namespace, key, refresh_ttl=refresh_ttl))

    async def aput(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | NotProvided | None = NOT_PROVIDED,
        expected_version: int | NotProvided | None = NOT_PROVIDED,
    ) -> None:
        """`BaseStore.aput`; with `expected_version`, only if the item is at that version
        (None: only if it does not exist), else `ItemVersionConflict`."""
        if isinstance(expected_version, NotProvided):
            await super().aput(namespace, key, value, index, ttl=ttl)
            return
        await self.aput_versioned(
            namespace, key, value, index, ttl=ttl, expected_version=expected_version
        )

    def put(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | NotProvided | None = NOT_PROVIDED,
        expected_version: int | NotProvided | None = NOT_PROVIDED,
    ) -> None:
        """Sync `aput`."""
        if isinstance(expected_version, NotProvided):
            super().put(namespace, key, value, index, ttl=ttl)
            return
        self.put_versioned(namespace, key, value, index, ttl=ttl, expected_version=expected_version)

    def _versioned_op(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None,
        ttl: float | NotProvided | None,
        expected_version: int | None,
    ) -> PutOp:
        if expected_version is not None and (
            type(expected_version) is not int or expected_version < 1
        ):
            raise InvalidValueError(
                f"expected_version must be None (item must not exist) or the int version an "
                f"aget_versioned() returned, got {expected_version!r}"
            )
        if not namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        if namespace[0] == "langgraph":
            raise InvalidNamespaceError(
                f'Root label for namespace cannot be "langgraph". Got: {namespace}'
            )
        if isinstance(ttl, NotProvided):
            ttl_minutes = None if self.ttl_config is None else self.ttl_config.get("default_ttl")
        else:
            ttl_minutes = ttl
        op = PutOp(namespace, str(key), value, index=index, ttl=ttl_minutes)
        self._checked_ops([op])
        return op

    async def aput_versioned(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | NotProvided | None = NOT_PROVIDED,
        expected_version: int | None,
    ) -> int:
        """Store the item only if it is at `expected_version` (None: only if absent); return
        its new version. Raises `ItemVersionConflict` (a `VersionConflict`) on a mismatch."""
        op = self._versioned_op(namespace, key, value, index, ttl, expected_version)

        async def run() -> int:
            return await self._put(await self._open(), op, expected_version)

        return await _LOOP.arun(run())

    def put_versioned(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | NotProvided | None = NOT_PROVIDED,
        expected_version: int | None,
    ) -> int:
        """Sync `aput_versioned`."""
        op = self._versioned_op(namespace, key, value, index, ttl, expected_version)

        async def run() -> int:
            return await self._put(await self._open(), op, expected_version)

        return _LOOP.run(run())

    # -- operations (on the store's loop) ------------------------------------------------------

    async def _read_record(
        self, connected: _Connected, stored_key: str
    ) -> tuple[_Record, int] | None:
        entry: TierEntry | None = await connected.hierarchy.read(stored_key)
        if entry is None:
            return None
        record = _Record.from_json(entry.value)
        if record is None or entry.version is None:
            return None
        return record, entry.version

    async def _live(
        self,
        connected: _Connected,
        namespace: tuple[str, ...],
        key: str,
        refresh_ttl: bool,
    ) -> tuple[_Record, int] | None:
        """The unexpired record and version of an item, its TTL refreshed if asked."""
        stored_key = encode_item_key(namespace, key)
        found = await self._read_record(connected, stored_key)
        if found is None:
            return None
        record, version = found
        now_s = time.time()
        if record.expired(now_s):
            return None
        if refresh_ttl and record.ttl_minutes is not None:
            refreshed = _Record(
                record.value,
                record.created_at,
                record.updated_at,
                record.ttl_minutes,
                _expires_at(record.ttl_minutes, now_s),
                record.vectors,
            )
            try:
                version = await connected.hierarchy.compare_and_swap(
                    stored_key, refreshed.to_json(), version
                )
                record = refreshed
            except VersionConflict:  # written meanwhile: that write set a fresh expiry
                found = await self._read_record(connected, stored_key)
                if found is None or found[0].expired(time.time()):
                    return None
                record, version = found
        return record, version

    async def _get(
        self, connected: _Connected, namespace: tuple[str, ...], key: str, refresh_ttl: bool
    ) -> VersionedItem | None:
        found = await self._live(connected, namespace, key, refresh_ttl)
        if found is None:
            return None
        record, version = found
        return record.item(namespace, key, version)

    def _texts(self, op: PutOp) -> list[str]:
        if self.embeddings is None or op.index is False or op.value is None:
            return []
        if op.index is None:
            fields = self._fields
        else:
            fields = [(path, tokenize_path(path)) for path in op.index]
        texts: list[str] = []
        for _path, tokens in fields:
            texts.extend(text for text in get_text_at_path(op.value, tokens) if text)
        return texts

    async def _put(
        self,
        connected: _Connected,
        op: PutOp,
        expected_version: int | NotProvided | None,
    ) -> int:
        assert op.value is not None
        stored_key = encode_item_key(op.namespace, op.key)
        if not isinstance(op.value, Mapping):
            raise InvalidValueError(
                f"an item's value must be a dict with str keys, got {type(op.value).__name__}: "
                f"{op.value!r:.80}"
            )
        texts = self._texts(op)
        if len(texts) > _VECTOR_ROWS_MAX:
            raise InvalidValueError(
                f"item {op.key!r} has {len(texts)} texts to index; at most {_VECTOR_ROWS_MAX} "
                "per item are searchable: index fewer fields"
            )
        previous = await self._read_record(connected, stored_key)
        now = datetime.now(UTC)
        now_s = now.timestamp()
        created = now.isoformat()
        if previous is not None and not previous[0].expired(now_s):
            created = previous[0].created_at
        ttl_minutes = _check_ttl(op.ttl)
        record = _Record(
            dict(op.value),
            created,
            now.isoformat(),
            ttl_minutes,
            _expires_at(ttl_minutes, now_s),
            len(texts),
        )
        hierarchy = connected.hierarchy
        if isinstance(expected_version, NotProvided):
            version = await hierarchy.set(stored_key, record.to_json(), tier_index=2)
            assert version is not None  # a write at the home returns its version
        else:
            try:
                version = await hierarchy.compare_and_swap(
                    stored_key, record.to_json(), expected_version
                )
            except VersionConflict as conflict:
                raise ItemVersionConflict(
                    op.namespace, op.key, expected=conflict.expected, actual=conflict.actual
                ) from conflict
        old_vectors = 0 if previous is None else previous[0].vectors
        await self._write_vectors(connected, stored_key, texts, old_vectors)
        return version

    async def _write_vectors(
        self, connected: _Connected, stored_key: str, texts: list[str], old_vectors: int
    ) -> None:
        semantic = connected.semantic
        if semantic is None:
            return
        for number, text in enumerate(texts):
            await semantic.write(f"{stored_key}#{number}", {"text": text})
        for number in range(len(texts), old_vectors):
            await semantic.delete(f"{stored_key}#{number}")

    async def _delete(self, connected: _Connected, namespace: tuple[str, ...], key: str) -> None:
        stored_key = encode_item_key(namespace, key)
        previous = await self._read_record(connected, stored_key)
        await connected.hierarchy.delete(stored_key)
        if previous is not None:
            await self._write_vectors(connected, stored_key, [], previous[0].vectors)

    async def _item_keys(self, connected: _Connected) -> list[tuple[tuple[str, ...], str, str]]:
        """(namespace, key, stored key) of every live item of this store's namespace."""
        items = []
        # Sorted here: the server sorts by its collation, which differs between servers.
        for stored_key in sorted(await HomeStore(connected.home).live_keys()):
            decoded = decode_item_key(stored_key)
            if decoded is not None:
                items.append((decoded[0], decoded[1], stored_key))
        return items

    async def _search(self, connected: _Connected, op: SearchOp) -> list[SearchItem]:
        prefix = namespace_key_prefix(tuple(op.namespace_prefix))
        candidates: list[tuple[tuple[str, ...], str, _Record, int]] = []
        for namespace, key, stored_key in await self._item_keys(connected):
            if not stored_key.startswith(prefix):
                continue
            found = await self._live(connected, namespace, key, refresh_ttl=False)
            if found is None or not _filter_holds(found[0].value, op.filter):
                continue
            candidates.append((namespace, key, *found))
        scores: dict[tuple[tuple[str, ...], str], float] = {}
        if op.query and connected.semantic is not None and candidates:
            scores = await self._scores(connected.semantic, op.query, candidates)
        ranked = sorted(
            candidates,
            key=lambda c: -scores[(c[0], c[1])] if (c[0], c[1]) in scores else float("inf"),
        )
        window = ranked[op.offset : op.offset + op.limit]
        results = []
        for namespace, key, record, _version in window:
            if op.refresh_ttl and record.ttl_minutes is not None:
                refreshed = await self._live(connected, namespace, key, refresh_ttl=True)
                if refreshed is not None:
                    record = refreshed[0]
            score = scores.get((namespace, key)) if op.query and scores else None
            results.append(
                SearchItem(
                    namespace=namespace,
                    key=key,
                    value=record.value,
                    created_at=datetime.fromisoformat(record.created_at),
                    updated_at=datetime.fromisoformat(record.updated_at),
                    score=score,
                )
            )
        return results

    async def _scores(
        self,
        semantic: DRAMTier,
        query: str,
        candidates: list[tuple[tuple[str, ...], str, _Record, int]],
    ) -> dict[tuple[tuple[str, ...], str], float]:
        """Each candidate's best cosine similarity to `query` among its indexed texts."""
        vectors = {
            encode_item_key(namespace, key): (namespace, key, record.vectors)
            for namespace, key, record, _ in candidates
            if record.vectors
        }
        wanted = sum(count for _, _, count in vectors.values())
        if not wanted:
            return {}
        query_vector = await self.embeddings.aembed_query(query)
        hits = await semantic.search(
            [float(component) for component in query_vector],
            limit=min(_VECTOR_ROWS_MAX, wanted),
            ef_search=1000,
        )
        scores: dict[tuple[tuple[str, ...], str], float] = {}
        for hit in hits:
            stored_key, _, number = hit.key.rpartition("#")
            owner = vectors.get(stored_key)
            if owner is None or not number.isdigit() or int(number) >= owner[2]:
                continue
            item = (owner[0], owner[1])
            scores[item] = max(scores.get(item, -2.0), hit.similarity)
        return scores

    async def _list_namespaces(
        self, connected: _Connected, op: ListNamespacesOp
    ) -> list[tuple[str, ...]]:
        namespaces = {namespace for namespace, _, _ in await self._item_keys(connected)}
        conditions = op.match_conditions or ()
        matching = [
            namespace
            for namespace in namespaces
            if all(_namespace_matches(namespace, condition) for condition in conditions)
        ]
        if op.max_depth is not None:
            matching = list({namespace[: op.max_depth] for namespace in matching})
        return sorted(matching)[op.offset : op.offset + op.limit]
