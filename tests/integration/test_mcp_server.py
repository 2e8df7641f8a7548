"""The `sagemem mcp` memory server through the MCP SDK's own client: in process, and as two
server processes over stdio on one namespace, where one's write is read by the other at once
and a stale expected_version is refused with a readable, typed tool error."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import CallToolResult, TextContent

from sagemem.integrations.mcp_server import MemoryServerConfig, build_server
from sagemem.scope import AgentCapability
from sagemem.services import POSTGRES_DSN_ENV, REDIS_URL_ENV, ServiceEndpoints
from tests.integration.polling import poll_until


def _text(result: CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


async def _ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, _text(result)
    structured = result.structured_content
    if structured is None:  # a client of an older protocol gets the JSON text only
        structured = json.loads(_text(result))
    assert isinstance(structured, dict)
    return structured


async def _error(client: Client, tool: str, **arguments: Any) -> str:
    """The text of the tool error `tool` returns, after the SDK's "Error executing tool" prefix."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool}({arguments}) succeeded: {_text(result)}"
    text = _text(result)
    prefix = f"Error executing tool {tool}: "
    assert text.startswith(prefix), text
    return text.removeprefix(prefix)


async def test_tools_get_put_search_list_and_delete_in_process(
    service_endpoints: ServiceEndpoints, namespace: str
) -> None:
    """Every tool through the SDK client against an in-process server on the real servers."""
    server = build_server(MemoryServerConfig(namespace=namespace, agent_id="solo"))
    async with Client(server) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert tools == {
            "memory_get",
            "memory_put",
            "memory_delete",
            "memory_search",
            "memory_list_keys",
        }
        missing = await _ok(client, "memory_get", key="fact:pi")
        assert missing == {"key": "fact:pi", "found": False, "value": None, "version": None}
        put = await _ok(client, "memory_put", key="fact:pi", value={"digits": 3.14159})
        got = await _ok(client, "memory_get", key="fact:pi")
        assert got == {"key": "fact:pi", "found": True, "value": {"digits": 3.14159}, **put}
        await _ok(client, "memory_put", key="fact:cats", value="cats purr when they are content")
        await _ok(client, "memory_put", key="note:rust", value="the rust borrow checker")
        search = await _ok(client, "memory_search", query="why do cats purr", limit=2)
        assert [hit["key"] for hit in search["hits"]] == ["fact:cats", "note:rust"]
        listed = await _ok(client, "memory_list_keys", prefix="fact:")
        assert listed["keys"] == ["fact:cats", "fact:pi"]
        assert listed["truncated"] is False
        deleted = await _ok(client, "memory_delete", key="fact:pi")
        assert deleted == {"key": "fact:pi", "deleted": True}
        assert (await _ok(client, "memory_get", key="fact:pi"))["found"] is False


async def test_tool_errors_name_the_error_type_and_change_nothing(
    service_endpoints: ServiceEndpoints, namespace: str
) -> None:
    """Bad keys, bad values, bad limits and conflicts are tool errors that say what to do."""
    server = build_server(MemoryServerConfig(namespace=namespace, agent_id="picky"))
    async with Client(server) as client:
        first = await _ok(client, "memory_put", key="k", value=1)
        assert (await _error(client, "memory_put", key="", value=1)).startswith("InvalidKeyError:")
        too_big = await _error(client, "memory_search", query="x", limit=0)
        assert too_big.startswith("InvalidValueError:")
        assert "limit" in too_big
        conflict = await _error(client, "memory_put", key="k", value=2, only_if_absent=True)
        assert conflict.startswith("VersionConflict:")
        assert f"is at version {first['version']}" in conflict
        both = await _error(
            client, "memory_put", key="k", value=2, expected_version=1, only_if_absent=True
        )
        assert both.startswith("InvalidValueError:")
        assert (await _ok(client, "memory_get", key="k"))["value"] == 1


async def test_a_scoped_server_refuses_writes_and_hides_reads_outside_its_prefixes(
    service_endpoints: ServiceEndpoints, namespace: str
) -> None:
    """With a capability, keys outside the grant are refused (writes) or invisible (listing)."""
    async with Client(build_server(MemoryServerConfig(namespace=namespace))) as admin:
        await _ok(admin, "memory_put", key="team:plan", value="ship it")
        await _ok(admin, "memory_put", key="secret:key", value="hunter2")
    capability = AgentCapability(
        {0, 1, 2, 3},
        read_prefixes={2: ("team:", "agent:a:")},
        write_prefixes={2: ("agent:a:",)},
    )
    scoped = build_server(
        MemoryServerConfig(namespace=namespace, agent_id="agent-a", capability=capability)
    )
    async with Client(scoped) as client:
        refused = await _error(client, "memory_put", key="team:plan", value="scrap it")
        assert refused.startswith("ScopeViolationError:")
        assert "'team:plan'" in refused
        hidden = await _error(client, "memory_get", key="secret:key")
        assert hidden.startswith("ScopeViolationError:")
        assert (await _ok(client, "memory_list_keys"))["keys"] == ["team:plan"]
        await _ok(client, "memory_put", key="agent:a:todo", value="read the plan")
        assert (await _ok(client, "memory_get", key="team:plan"))["value"] == "ship it"


def _stdio_server(endpoints: ServiceEndpoints, namespace: str, agent_id: str) -> Client:
    command = [sys.executable, "-m", "sagemem.cli", "mcp", "--namespace", namespace]
    return Client(
        StdioServerParameters(
            command=command[0],
            args=[*command[1:], "--agent-id", agent_id],
            env={REDIS_URL_ENV: endpoints.redis_url, POSTGRES_DSN_ENV: endpoints.postgres_dsn},
        ),
        read_timeout_seconds=60.0,
    )


async def test_two_server_processes_share_writes_at_once_and_refuse_a_stale_expected_version(
    service_endpoints: ServiceEndpoints, namespace: str
) -> None:
    """Process B reads A's write immediately; B's put at the version A replaced is refused."""
    async with (
        _stdio_server(service_endpoints, namespace, "agent-a") as a,
        _stdio_server(service_endpoints, namespace, "agent-b") as b,
    ):
        created = await _ok(a, "memory_put", key="plan", value={"step": 1})
        seen_by_b = await _ok(b, "memory_get", key="plan")
        assert seen_by_b["value"] == {"step": 1}
        assert seen_by_b["version"] == created["version"]
        updated = await _ok(
            a, "memory_put", key="plan", value={"step": 2}, expected_version=created["version"]
        )
        assert updated["version"] > created["version"]
        assert (await _ok(b, "memory_get", key="plan"))["value"] == {"step": 2}
        stale = await _error(
            b, "memory_put", key="plan", value={"step": 99}, expected_version=created["version"]
        )
        assert stale.startswith("VersionConflict:")
        assert f"expected at version {created['version']}" in stale
        assert f"is at version {updated['version']}" in stale
        for client in (a, b):
            final = await _ok(client, "memory_get", key="plan")
            assert final["value"] == {"step": 2}
            assert final["version"] == updated["version"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_the_server_also_serves_streamable_http(
    service_endpoints: ServiceEndpoints, namespace: str
) -> None:
    """`sagemem mcp --transport streamable-http` answers the SDK's HTTP client."""
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sagemem.cli",
        "mcp",
        "--namespace",
        namespace,
        "--transport",
        "streamable-http",
        "--port",
        str(port),
        env={
            **os.environ,
            REDIS_URL_ENV: service_endpoints.redis_url,
            POSTGRES_DSN_ENV: service_endpoints.postgres_dsn,
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def listening() -> bool:
            assert process.returncode is None, "the server exited"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await poll_until(listening, f"the MCP server to listen on port {port}")
        async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=60.0) as client:
            put = await _ok(client, "memory_put", key="over-http", value=[1, 2])
            got = await _ok(client, "memory_get", key="over-http")
            assert (got["value"], got["version"]) == ([1, 2], put["version"])
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)


async def test_two_sessions_of_one_server_share_its_hierarchy(
    service_endpoints: ServiceEndpoints, namespace: str
) -> None:
    """Concurrent in-process sessions of one server are one agent; closing one keeps the other."""
    server = build_server(MemoryServerConfig(namespace=namespace, agent_id="shared"))
    async with Client(server) as first:
        async with Client(server) as second:
            put = await _ok(first, "memory_put", key="k", value="v")
            assert (await _ok(second, "memory_get", key="k"))["version"] == put["version"]
        assert (await _ok(first, "memory_get", key="k"))["value"] == "v"
