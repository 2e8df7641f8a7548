"""`sagemem mcp`: an MCP server whose tools read and write one sagemem namespace (`sagemem[mcp]`).

One server is one agent (`--agent-id`) on one namespace (`--namespace`), over stdio (the
default) or streamable HTTP. Its hierarchy is `sagemem.connect(namespace=..., agent_id=...,
semantic=True)`: a coherent L1 over L2, L3 (the home, where versions are committed) and the
semantic tier, so servers in other processes on the same servers and namespace read each
other's writes at once, and a write with `expected_version` is a compare-and-swap at the home.

Tools: `memory_get` (value and version), `memory_put` (optional `expected_version`, or
`only_if_absent`), `memory_delete`, `memory_search` (by meaning, through the semantic tier) and
`memory_list_keys` (by prefix). Every failure the caller can act on is a tool error whose text
starts with the sagemem error's type (`VersionConflict: ...`, `ScopeViolationError: ...`,
`InvalidKeyError: ...`) and says what to do. An optional `AgentCapability` scopes the server:
reads and writes of keys outside it are refused before anything is touched (this is the
in-process check; `sagemem grants` makes the servers enforce the same grant).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

import sagemem
from sagemem.coherence.home import HomeStore
from sagemem.coherence.messages import check_agent_id
from sagemem.errors import (
    ClosedResourceError,
    InvalidValueError,
    SageMemError,
    ScopeViolationError,
    VersionConflict,
)
from sagemem.hierarchy import MemoryHierarchy
from sagemem.scope import L3_INDEX, AgentCapability
from sagemem.tiers.dram import DRAMTier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue, check_key, check_namespace, encode_value

__all__ = ["MemoryServerConfig", "build_server", "main"]

_SEARCH_LIMIT_MAX: Final = 100
_LIST_LIMIT_MAX: Final = 1000
DRAM_INDEX: Final = 3


@dataclass(frozen=True, slots=True)
class MemoryServerConfig:
    """What one `sagemem mcp` server serves: a namespace, as one agent, optionally scoped.

    `redis_url` / `postgres_dsn` default to `SAGEMEM_REDIS_URL` / `SAGEMEM_POSTGRES_DSN`, else
    the embedded servers. `capability` None allows every key.
    """

    namespace: str = "default"
    agent_id: str = field(default_factory=lambda: f"mcp-{uuid.uuid4().hex[:12]}")
    redis_url: str | None = None
    postgres_dsn: str | None = None
    capability: AgentCapability | None = None

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        check_agent_id(self.agent_id)


class _Memory:
    """The server's open hierarchy, shared by every session of the server (reference counted:
    stdio and in-process runs enter the lifespan once per session, streamable HTTP once)."""

    def __init__(self, config: MemoryServerConfig) -> None:
        self.config = config
        self._hierarchy: MemoryHierarchy | None = None
        self._sessions = 0
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        config = self.config
        async with self._lock:
            if self._hierarchy is None:
                self._hierarchy = await sagemem.connect(
                    redis_url=config.redis_url,
                    postgres_dsn=config.postgres_dsn,
                    namespace=config.namespace,
                    agent_id=config.agent_id,
                    semantic=True,
                )
            self._sessions += 1

    async def release(self) -> None:
        async with self._lock:
            self._sessions -= 1
            if self._sessions == 0 and self._hierarchy is not None:
                hierarchy, self._hierarchy = self._hierarchy, None
                await hierarchy.aclose()

    @property
    def hierarchy(self) -> MemoryHierarchy:
        if self._hierarchy is None:
            raise ClosedResourceError("the memory server's hierarchy is not open")
        return self._hierarchy

    def home(self) -> L3Tier:
        return next(tier for tier in self.hierarchy.tiers if isinstance(tier, L3Tier))

    def semantic(self) -> DRAMTier:
        return next(tier for tier in self.hierarchy.tiers if isinstance(tier, DRAMTier))

    def check_read(self, key: str) -> None:
        capability = self.config.capability
        if capability is not None and not capability.may_read(L3_INDEX, key):
            raise ScopeViolationError(
                f"agent {self.config.agent_id!r} may not read key {key!r}: "
                f"{capability.describe_tier(L3_INDEX)}"
            )

    def check_write(self, key: str) -> None:
        capability = self.config.capability
        if capability is not None and not capability.may_write(L3_INDEX, key):
            raise ScopeViolationError(
                f"agent {self.config.agent_id!r} may not write key {key!r}: "
                f"{capability.describe_tier(L3_INDEX)}"
            )

    def visible(self, key: str) -> bool:
        capability = self.config.capability
        return capability is None or capability.may_read(L3_INDEX, key)


def _tool_error(error: SageMemError) -> ToolError:
    """A tool error whose text names the sagemem error type, then says what happened."""
    if isinstance(error, VersionConflict):
        want = "absent" if error.expected is None else f"version {error.expected}"
        have = "absent" if error.actual is None else f"version {error.actual}"
        return ToolError(
            f"VersionConflict: key {error.key!r} was expected at {want} but is at {have}; "
            "call memory_get for the current value and version, then retry the put with that "
            "expected_version"
        )
    return ToolError(f"{type(error).__name__}: {error}")


def _check_limit(name: str, limit: object, maximum: int) -> int:
    if type(limit) is not int or not 1 <= limit <= maximum:
        raise InvalidValueError(f"{name} must be an int from 1 to {maximum}, got {limit!r}")
    return limit


def build_server(config: MemoryServerConfig) -> MCPServer[Any]:
    """An `MCPServer` with the memory tools over `config`'s namespace (opened per run)."""
    memory = _Memory(config)

    @asynccontextmanager
    async def lifespan(_server: MCPServer[Any]) -> AsyncIterator[None]:
        await memory.open()
        try:
            yield None
        finally:
            await memory.release()

    server: MCPServer[Any] = MCPServer(
        name="sagemem",
        instructions=(
            f"Shared memory of namespace {config.namespace!r} (you are agent "
            f"{config.agent_id!r}). memory_get returns a value and its version; to update "
            "without losing another agent's write, pass that version as expected_version to "
            "memory_put, and on a VersionConflict get the key again and retry."
        ),
        lifespan=lifespan,
    )

    @server.tool()
    async def memory_get(key: str) -> dict[str, Any]:
        """The value of `key` and its version (found=false if the key holds nothing)."""
        try:
            check_key(key)
            memory.check_read(key)
            entry = await memory.hierarchy.read(key)
        except SageMemError as error:
            raise _tool_error(error) from error
        if entry is None:
            return {"key": key, "found": False, "value": None, "version": None}
        return {"key": key, "found": True, "value": entry.value, "version": entry.version}

    @server.tool()
    async def memory_put(
        key: str,
        value: Any,
        expected_version: int | None = None,
        only_if_absent: bool = False,
    ) -> dict[str, Any]:
        """Store a JSON `value` at `key`; return its new version. With `expected_version` (the
        version memory_get returned), store only if the key is still at that version; with
        `only_if_absent`, only if it holds nothing. Otherwise a VersionConflict error."""
        try:
            check_key(key)
            encode_value(value)
            memory.check_write(key)
            if expected_version is not None and only_if_absent:
                raise InvalidValueError(
                    f"pass expected_version ({expected_version}) or only_if_absent, not both"
                )
            hierarchy = memory.hierarchy
            if expected_version is None and not only_if_absent:
                version = await hierarchy.set(key, value, tier_index=L3_INDEX)
            else:
                version = await hierarchy.compare_and_swap(key, value, expected_version)
            # The hierarchy indexes the home's new version for memory_search before returning.
        except SageMemError as error:
            raise _tool_error(error) from error
        return {"key": key, "version": version}

    @server.tool()
    async def memory_delete(key: str) -> dict[str, Any]:
        """Delete `key` everywhere; `deleted` says whether it held a value."""
        try:
            check_key(key)
            memory.check_write(key)
            deleted = await memory.hierarchy.delete(key)
        except SageMemError as error:
            raise _tool_error(error) from error
        return {"key": key, "deleted": deleted}

    @server.tool()
    async def memory_search(query: str, limit: int = 5) -> dict[str, Any]:
        """The keys whose values are closest in meaning to `query`, closest first, each with
        its current value, version and similarity (1 = same direction)."""
        try:
            _check_limit("limit", limit, _SEARCH_LIMIT_MAX)
            hits = await memory.semantic().search(query, limit=limit)
            results: list[dict[str, JSONValue]] = []
            for hit in hits:
                if not memory.visible(hit.key):
                    continue
                entry = await memory.hierarchy.read(hit.key)  # the coherent value and version
                if entry is None:
                    continue
                results.append(
                    {
                        "key": hit.key,
                        "value": entry.value,
                        "version": entry.version,
                        "similarity": round(hit.similarity, 6),
                    }
                )
        except SageMemError as error:
            raise _tool_error(error) from error
        return {"query": query, "hits": results}

    @server.tool()
    async def memory_list_keys(prefix: str = "", limit: int = 100) -> dict[str, Any]:
        """The keys that hold a value and start with `prefix`, sorted (at most `limit`)."""
        try:
            _check_limit("limit", limit, _LIST_LIMIT_MAX)
            keys = [
                key
                for key in sorted(await HomeStore(memory.home()).live_keys())
                if key.startswith(prefix) and memory.visible(key)
            ]
        except SageMemError as error:
            raise _tool_error(error) from error
        return {"prefix": prefix, "keys": keys[:limit], "truncated": len(keys) > limit}

    return server


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sagemem mcp",
        description="An MCP server whose tools read and write one sagemem namespace, as one "
        "agent. Servers come from --redis-url/--postgres-dsn, else SAGEMEM_REDIS_URL/"
        "SAGEMEM_POSTGRES_DSN, else the embedded servers.",
    )
    parser.add_argument("--namespace", default="default", help="the sagemem namespace")
    parser.add_argument("--agent-id", default=None, help="this server's agent id (default: new)")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--postgres-dsn", default=None)
    parser.add_argument(
        "--transport", choices=["stdio", "streamable-http"], default="stdio", help="default stdio"
    )
    parser.add_argument("--host", default="127.0.0.1", help="streamable HTTP: address")
    parser.add_argument("--port", type=int, default=8765, help="streamable HTTP: port")
    parser.add_argument(
        "--read-prefix",
        action="append",
        default=None,
        help="scope: the agent may read only keys with this prefix (repeatable)",
    )
    parser.add_argument(
        "--write-prefix",
        action="append",
        default=None,
        help="scope: the agent may write only keys with this prefix (repeatable)",
    )
    parser.add_argument("--read-only", action="store_true", help="scope: refuse every write")
    return parser


def _capability(
    read_prefixes: Sequence[str] | None, write_prefixes: Sequence[str] | None, read_only: bool
) -> AgentCapability | None:
    if read_prefixes is None and write_prefixes is None and not read_only:
        return None
    reads = None if read_prefixes is None else {L3_INDEX: tuple(read_prefixes)}
    writes = None if write_prefixes is None else {L3_INDEX: tuple(write_prefixes)}
    return AgentCapability(
        {0, 1, L3_INDEX, DRAM_INDEX},
        l3_read=True,
        l3_write=not read_only,
        read_prefixes=reads,
        write_prefixes=writes,
    )


def main(argv: Sequence[str]) -> int:
    """`sagemem mcp [options]`: serve until stdin closes (stdio) or Ctrl-C (HTTP)."""
    args = _parser().parse_args(list(argv))
    try:
        config = MemoryServerConfig(
            namespace=args.namespace,
            **({} if args.agent_id is None else {"agent_id": args.agent_id}),
            redis_url=args.redis_url,
            postgres_dsn=args.postgres_dsn,
            capability=_capability(args.read_prefix, args.write_prefix, args.read_only),
        )
    except SageMemError as error:
        print(f"sagemem mcp: {error}", file=sys.stderr)
        return 2
    server = build_server(config)
    transport: Literal["stdio", "streamable-http"] = args.transport
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)
    return 0
