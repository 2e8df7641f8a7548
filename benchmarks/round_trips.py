"""Client-side round-trip counts of one agent process, for `benchmarks.run_all`.

`install()` wraps, in this process only, the driver calls that each cost one round trip:
redis-py's `Redis.execute_command` (a command, a script call) and `Pipeline.execute` (a whole
pipeline), asyncpg's `Connection._execute` (every statement with arguments, the fetch calls)
and `Connection.execute` without arguments (a simple query: BEGIN, COMMIT, ...). Pub/sub
messages a process receives are not round trips and are not counted. Postgres's own counters
(`pg_stat_database`) are flushed by each backend at most once a second, too late for runs of a
second or two, so the harness counts Postgres round trips here. Benchmark code only: the
library never imports it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg.connection
import redis.asyncio.client

__all__ = ["counts", "install"]

_counts: Final = {"redis_round_trips": 0, "postgres_round_trips": 0}
_installed: list[bool] = []


def counts() -> dict[str, int]:
    """The round trips counted so far in this process (a copy)."""
    return dict(_counts)


def _counting(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def counted(*args: Any, **kwargs: Any) -> Any:
        _counts[name] += 1
        return await method(*args, **kwargs)

    return counted


def install() -> None:
    """Start counting (idempotent)."""
    if _installed:
        return
    _installed.append(True)
    redis_client: Any = redis.asyncio.client
    postgres: Any = asyncpg.connection.Connection
    redis_client.Redis.execute_command = _counting(
        "redis_round_trips", redis_client.Redis.execute_command
    )
    redis_client.Pipeline.execute = _counting("redis_round_trips", redis_client.Pipeline.execute)
    postgres._execute = _counting("postgres_round_trips", postgres._execute)
    plain_execute = postgres.execute

    async def execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if not args:  # with arguments it goes through _execute, counted there
            _counts["postgres_round_trips"] += 1
        return await plain_execute(self, query, *args, **kwargs)

    postgres.execute = execute
