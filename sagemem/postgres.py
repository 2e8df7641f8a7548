"""Postgres access shared by the L3 tier, the semantic tier and the coherence home.

One module owns how sagemem talks to Postgres: the connection pool (`ConnectionPool`), the
errors a driver may raise (`POSTGRES_DRIVER_ERRORS`) and their translation into sagemem's
(`Statements`: one statement on a pool, a server refusal becoming `ScopeViolationError` and a
failure `TierUnavailable`), and the JSON text that reads back from JSONB unchanged
(`jsonb_text`). `sagemem.tiers.l3` builds its tables on it; `sagemem.coherence.home` runs its
statements through a tier's `statements` without reaching into the tier (`RowTable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from types import TracebackType
from typing import Final, Protocol

import asyncpg
from asyncpg import Connection

from sagemem._driver_errors import not_connected, refused_by_server, tier_unavailable
from sagemem.values import JSONValue

__all__ = [
    "DDL_LOCK_ID",
    "POSTGRES_DRIVER_ERRORS",
    "POSTGRES_HINT",
    "ConnectionPool",
    "LeaseExpired",
    "RowTable",
    "Statements",
    "jsonb_text",
]

POSTGRES_DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
POSTGRES_HINT: Final = (
    "check that the Postgres server is running and that the DSN (argument or "
    "SAGEMEM_POSTGRES_DSN) points at it; `sagemem services status` shows the embedded servers"
)

# One advisory lock id for every sagemem DDL (the tiers' tables, the home's columns), so
# processes connecting at once create objects in turn.
DDL_LOCK_ID: Final = 0x5A6E_0002


class LeaseExpired(TimeoutError):
    """A lease outlived the pool's `lease_time_max_s`: its connection was terminated."""


class ConnectionPool:
    """At most `size_max` asyncpg connections, lent one at a time and reused as they are.

    asyncpg's own pool resets every connection on release (a round trip: `RESET ALL`,
    `UNLISTEN *`, ...) and arms a timer per statement for its `command_timeout`; for a
    primary-key read those nearly double the latency. sagemem's statements never leave session
    state behind (they change settings only with `set_config(..., true)` inside a
    transaction), so a connection goes straight back to the idle list, unless the block failed
    with anything but a server error or the connection is closed or still in a transaction:
    then it is terminated and a new one is opened on demand.

    Every wait is bounded: a free connection is awaited at most `acquire_timeout_s`, opening
    one by the connect function's own timeout, and a watchdog task (started by `start()`,
    owned by the pool and stopped by `close()`) terminates the connection of any lease older
    than `lease_time_max_s`, which makes the statement waiting on it fail at once; the lease
    then raises `LeaseExpired`. One watchdog replaces a timer per statement.
    """

    def __init__(
        self,
        open_connection: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        size_max: int,
        acquire_timeout_s: float,
        lease_time_max_s: float,
    ) -> None:
        self._open_connection = open_connection
        self._idle: list[asyncpg.Connection] = []
        self._slots = asyncio.Semaphore(size_max)
        self._acquire_timeout_s = acquire_timeout_s
        self._lease_time_max_s = lease_time_max_s
        self._deadlines: dict[asyncpg.Connection, float] = {}
        self._expired: set[asyncpg.Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Start the watchdog (call from the event loop that will use the pool)."""
        if self._watchdog is None and not self._closed:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch(), name="sagemem connection-pool watchdog"
            )

    def add_idle(self, connection: asyncpg.Connection) -> None:
        """Hand an already opened connection to the pool."""
        self._idle.append(connection)

    def lease(self) -> _Lease:
        """`async with pool.lease() as connection:` lends one connection for the block."""
        return _Lease(self)

    async def _watch(self) -> None:
        interval_s = min(1.0, self._lease_time_max_s / 4)
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            for connection, deadline in list(self._deadlines.items()):
                if now > deadline and connection not in self._expired:
                    self._expired.add(connection)
                    connection.terminate()

    async def _acquire(self) -> asyncpg.Connection:
        if self._closed:
            raise asyncpg.InterfaceError("the connection pool is closed")
        if self._slots.locked():
            async with asyncio.timeout(self._acquire_timeout_s):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        try:
            connection = None
            while self._idle:
                candidate = self._idle.pop()
                if not candidate.is_closed():
                    connection = candidate
                    break
            if connection is None:
                connection = await self._open_connection()
        except BaseException:
            self._slots.release()
            raise
        self._deadlines[connection] = time.monotonic() + self._lease_time_max_s
        return connection

    def _release(self, connection: asyncpg.Connection, *, healthy: bool) -> bool:
        """Return `connection`; True if the watchdog had expired its lease."""
        try:
            del self._deadlines[connection]
            expired = connection in self._expired
            self._expired.discard(connection)
            if (
                healthy
                and not expired
                and not self._closed
                and not connection.is_closed()
                and not connection.is_in_transaction()
            ):
                self._idle.append(connection)
            else:
                connection.terminate()
        finally:
            self._slots.release()
        return expired

    async def close(self, timeout_s: float) -> None:
        """Stop the watchdog and close the idle connections (lent ones close on return)."""
        self._closed = True
        watchdog, self._watchdog = self._watchdog, None
        idle, self._idle = self._idle, []
        try:
            if watchdog is not None:
                watchdog.cancel()
                await asyncio.wait([watchdog])
            for connection in idle:
                try:
                    await connection.close(timeout=timeout_s)
                except (*POSTGRES_DRIVER_ERRORS, RuntimeError):
                    connection.terminate()
        finally:
            # Also when cancelled while saying goodbye: release every socket before leaving.
            for connection in idle:
                connection.terminate()


class _Lease:
    __slots__ = ("_connection", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._connection: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self._connection = await self._pool._acquire()
        return self._connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection = self._connection
        if connection is None:
            return
        self._connection = None
        # A server error leaves the connection usable; anything else (a lost connection, a
        # cancellation mid-statement) may leave it in an unknown state.
        healthy = exc is None or isinstance(exc, asyncpg.PostgresError)
        expired = self._pool._release(connection, healthy=healthy)
        if expired and exc is not None and not isinstance(exc, asyncio.CancelledError):
            raise LeaseExpired(
                f"the statement took longer than {self._pool._lease_time_max_s} s, so its "
                "connection was dropped; whether a write in it committed is unknown"
            ) from exc


def _positional_float(number: float) -> str:
    text = repr(number)
    if "e" not in text:
        return text
    text = format(Decimal(text), "f")
    return text if "." in text else text + ".0"


def _emit_positional(value: JSONValue, parts: list[str]) -> None:
    if type(value) is float:
        parts.append(_positional_float(value))
    elif isinstance(value, dict):
        parts.append("{")
        for index, (item_key, item) in enumerate(value.items()):
            if index:
                parts.append(",")
            parts.append(json.dumps(item_key, ensure_ascii=False))
            parts.append(":")
            _emit_positional(item, parts)
        parts.append("}")
    elif isinstance(value, list):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _emit_positional(item, parts)
        parts.append("]")
    else:
        parts.append(json.dumps(value, ensure_ascii=False))


def jsonb_text(value: JSONValue, canonical_text: str) -> str:
    """JSON text for `value` that reads back from JSONB with floats still floats.

    `canonical_text` is `encode_value(value)`; it is returned unchanged unless it holds an
    exponent with a '+' (the only float spelling that `numeric` turns into an integer).
    """
    if "e+" not in canonical_text:
        return canonical_text
    parts: list[str] = []
    _emit_positional(value, parts)
    return "".join(parts)


class Statements:
    """One statement at a time on a tier's pool, with the tier's error translation: a
    privilege error (a grant's role: RLS, rights) is `ScopeViolationError`, any other driver
    failure `TierUnavailable` naming the operation and key. `pool` is asked for each call, so a
    tier not yet connected (or closed) raises `ClosedResourceError`."""

    __slots__ = ("_name", "_pool")

    def __init__(self, name: str, pool: Callable[[], ConnectionPool | None]) -> None:
        self._name = name
        self._pool = pool

    def _connected(self) -> ConnectionPool:
        pool = self._pool()
        if pool is None:
            raise not_connected(self._name)
        return pool

    @contextlib.asynccontextmanager
    async def _connection(self, operation: str, key: str | None) -> AsyncIterator[Connection]:
        """A leased connection; what a statement on it raises is translated on the way out."""
        pool = self._connected()
        try:
            async with pool.lease() as connection:
                yield connection
        except asyncpg.InsufficientPrivilegeError as error:
            raise refused_by_server(self._name, operation, key, error) from error
        except POSTGRES_DRIVER_ERRORS as error:
            raise tier_unavailable(
                self._name, operation, error, hint=POSTGRES_HINT, key=key
            ) from error

    async def fetchrow(
        self, operation: str, key: str | None, sql: str, *args: object
    ) -> asyncpg.Record | None:
        """The statement's first row (None if none)."""
        async with self._connection(operation, key) as connection:
            row: asyncpg.Record | None = await connection.fetchrow(sql, *args)
            return row

    async def fetch(
        self, operation: str, key: str | None, sql: str, *args: object
    ) -> list[asyncpg.Record]:
        """Every row of the statement."""
        async with self._connection(operation, key) as connection:
            rows: list[asyncpg.Record] = await connection.fetch(sql, *args)
            return rows

    async def execute(self, operation: str, key: str | None, sql: str, *args: object) -> None:
        """Run the statement for its effect."""
        async with self._connection(operation, key) as connection:
            await connection.execute(sql, *args)


class RowTable(Protocol):
    """What the coherence home needs of the table it keeps its columns in (`L3Tier` is one)."""

    @property
    def namespace(self) -> str: ...

    @property
    def table(self) -> str: ...

    @property
    def value_size_max_bytes(self) -> int: ...

    @property
    def statements(self) -> Statements: ...
