"""The key layout that lets the protocol run on a cluster (every key of a namespace in the
namespace's hash slot), and the reading of a node's slot map (`cluster_map`)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
import redis.asyncio as redis_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError

from sagemem import keyspace
from sagemem.coherence.messages import channel_name, subscription_pattern
from sagemem.errors import ConfigurationError, TierUnavailable
from sagemem.redis_topology import cluster_map, key_hash_slot
from sagemem.spec.vocabulary import MessageKind
from sagemem.values import check_namespace

KEYS = ("k", "a{b}c", "{x}", "}{", "team:plan|x%", "ключ", "{}")


@pytest.mark.parametrize("namespace", ["ns", "team-7.alpha_beta", "x" * 64])
def test_every_key_of_a_namespace_lives_in_the_namespaces_slot(namespace: str) -> None:
    """L2 copies, directory keys, the cluster birth key, sequence counters and channels all
    carry the namespace as their hash tag, whatever braces the user's key contains."""
    slot = key_hash_slot(namespace)
    names = [keyspace.directory_birth_key(namespace)]
    for key in KEYS:
        names += [
            keyspace.l2_prefix(namespace) + key,
            *(
                keyspace.directory_prefix(namespace) + f"{kind}:{key}"
                for kind in ("lease", "holders", "acks", "relayed")
            ),
            keyspace.bus_prefix(namespace) + "agent-1:seq",
            channel_name(namespace, "agent-1", MessageKind.INVALIDATE, key),
        ]
    assert {key_hash_slot(name) for name in names} == {slot}
    assert subscription_pattern(namespace, "a").startswith(keyspace.bus_prefix(namespace))


def test_namespaces_cannot_hold_braces_so_the_tag_is_exactly_the_namespace() -> None:
    """A namespace with a brace would change which part of the key is hashed: refused."""
    for bad in ("a{b", "a}b", "{ns}"):
        with pytest.raises(ConfigurationError):
            check_namespace(bad)


def test_prefixes_of_two_namespaces_never_overlap() -> None:
    """`ns` and `ns.l2` (the scope's derived space) or `ns2`: no prefix starts another."""
    for make in (keyspace.l2_prefix, keyspace.directory_prefix, keyspace.bus_prefix):
        first, second, third = make("ns"), make("ns.l2"), make("ns2")
        assert not second.startswith(first)
        assert not third.startswith(first)


class _Node:
    """Answers `CLUSTER SLOTS` with a canned reply, as a node would (RESP2 shape)."""

    def __init__(self, reply: object = None, error: BaseException | None = None) -> None:
        self.reply, self.error = reply, error

    async def execute_command(self, *args: object) -> object:
        assert args == ("CLUSTER", "SLOTS")
        if self.error is not None:
            raise self.error
        return self.reply


_REPLY = [
    [0, 5460, [b"10.0.0.1", 7000, b"id1", {}], [b"10.0.0.4", 7003, b"id4", {}]],
    [5461, 10922, [b"10.0.0.2", 7001, b"id2", {}], [b"10.0.0.5", 7004, b"id5", {}]],
    [10923, 16383, [b"10.0.0.3", 7002, b"id3", {}]],
]


def _map(node: _Node, slot: int) -> Any:
    return asyncio.run(cluster_map(cast(redis_asyncio.Redis, node), slot))


def test_cluster_map_names_the_slots_primary_its_replicas_and_every_node() -> None:
    """The owner of a slot in the middle, at a range's edges, and with no replica."""
    found = _map(_Node(_REPLY), 6000)
    assert found.primary == ("10.0.0.2", 7001)
    assert found.replicas == (("10.0.0.5", 7004),)
    assert found.nodes[0] == found.primary
    assert set(found.nodes) == {
        ("10.0.0.1", 7000),
        ("10.0.0.4", 7003),
        ("10.0.0.2", 7001),
        ("10.0.0.5", 7004),
        ("10.0.0.3", 7002),
    }
    assert _map(_Node(_REPLY), 5461).primary == ("10.0.0.2", 7001)
    assert _map(_Node(_REPLY), 16383).replicas == ()


def test_a_slot_no_node_serves_and_a_dead_node_are_typed_errors() -> None:
    """An uncovered slot (a cluster forming or failing over) and an unreachable node raise
    TierUnavailable saying what to do; a number that is no slot raises ConfigurationError."""
    with pytest.raises(TierUnavailable, match="no node of the cluster serves hash slot 3"):
        _map(_Node([[100, 200, [b"h", 1, b"id", {}]]]), 3)
    with pytest.raises(TierUnavailable, match="CLUSTER SLOTS"):
        _map(_Node(error=RedisConnectionError("refused")), 3)
    for bad in (-1, 16384, "1", 1.0):
        with pytest.raises(ConfigurationError):
            _map(_Node(_REPLY), bad)  # type: ignore[arg-type]
