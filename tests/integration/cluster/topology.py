"""Reading a local cluster's layout with plain (single-node) clients, to check what the cluster
clients and sagemem's slot computation claim against what the nodes themselves say."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis_asyncio


@dataclass(frozen=True, slots=True)
class NodeView:
    """One line of `CLUSTER NODES`: a node's id, port, role, primary and slot ranges."""

    node_id: str
    port: int
    is_primary: bool
    primary_id: str | None
    slot_ranges: tuple[tuple[int, int], ...]

    def owns(self, slot: int) -> bool:
        """True if this node serves `slot` (primaries only)."""
        return any(first <= slot <= last for first, last in self.slot_ranges)


def parse_cluster_nodes(text: str) -> list[NodeView]:
    """The nodes of a `CLUSTER NODES` reply, failed ones included."""
    views: list[NodeView] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address, flags, primary = fields[0], fields[1], fields[2].split(","), fields[3]
        port = int(address.partition("@")[0].rpartition(":")[2])
        ranges: list[tuple[int, int]] = []
        for item in fields[8:]:
            if item.startswith("["):
                continue  # a slot being imported or migrated
            first, _, last = item.partition("-")
            ranges.append((int(first), int(last or first)))
        views.append(
            NodeView(
                node_id=node_id,
                port=port,
                is_primary="master" in flags,
                primary_id=None if primary == "-" else primary,
                slot_ranges=tuple(ranges),
            )
        )
    return views


def url_with_port(url: str, port: int) -> str:
    """`url` (password included) pointed at another local node."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}"))


async def cluster_nodes(url: str) -> list[NodeView]:
    """The cluster as the node at `url` sees it."""
    client = redis_asyncio.Redis.from_url(url, decode_responses=True)
    try:
        reply = await client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]  # untyped in redis-py
    finally:
        await client.aclose()
    assert isinstance(reply, str)
    return parse_cluster_nodes(reply)


async def info_fields(url: str, *command: str) -> dict[str, str]:
    """A `key:value` reply (`CLUSTER INFO`, `INFO replication`) of the node at `url`."""
    client = redis_asyncio.Redis.from_url(url, decode_responses=True)
    try:
        reply = await client.execute_command(*command)  # type: ignore[no-untyped-call]  # untyped in redis-py
    finally:
        await client.aclose()
    if isinstance(reply, dict):
        return {str(name): str(value) for name, value in reply.items()}
    assert isinstance(reply, str)
    fields: dict[str, str] = {}
    for line in reply.splitlines():
        name, separator, value = line.partition(":")
        if separator:
            fields[name.strip()] = value.strip()
    return fields
