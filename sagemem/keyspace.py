"""Every Redis key space sagemem uses, in one place.

- `sagemem:{<namespace>}:<key>`: an L2 copy (`L2Tier`; the directory's leased fill writes the
  same key);
- `sagemem-dir:{<namespace>}:{lease,holders,acks,relayed}:<key>`, and `sagemem-dir:birth`
  (one server) or `sagemem-dir:{<namespace>}:born` (a cluster): the coherence directory
  (`sagemem.coherence.directory`);
- `sagemem-bus:{<namespace>}:<agent>|<tag>|<key>` (channels) and `sagemem-bus:{<namespace>}:
  <agent>:seq` (sequence counters): the bus (`sagemem.coherence.messages`, `.bus`);
- `sagemem-grant:<...>`: the Redis users `sagemem.grants` creates.

The namespace is written between braces: it is the key's *hash tag*, so on a Redis/Valkey
Cluster every key of one namespace lives in the same hash slot (`redis_topology.key_hash_slot`)
and therefore on one primary. That is what lets every protocol script (a fill registers a
holder and reads the L2 copy; a relay deletes the copy, bumps each holder's sequence counter
and publishes) stay a single-slot script on a cluster, and what makes one namespace's directory
fail over as one unit (see `docs/architecture.md`). A cluster spreads namespaces over its
primaries, not the keys of one namespace. Namespaces never contain braces
(`values.NAMESPACE_PATTERN`), so the tag is exactly the namespace, and keys (which may contain
braces) come after it and never change the slot.

`sagemem.grants` builds its ACL key and channel rules from these prefixes, so a new key space
added here is one a grant must also cover.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BUS_PREFIX",
    "DIRECTORY_BIRTH_KEY",
    "DIRECTORY_PREFIX",
    "GRANT_USER_PREFIX",
    "L2_PREFIX",
    "bus_prefix",
    "directory_birth_key",
    "directory_prefix",
    "l2_prefix",
]

L2_PREFIX: Final = "sagemem"
DIRECTORY_PREFIX: Final = "sagemem-dir"
BUS_PREFIX: Final = "sagemem-bus"
GRANT_USER_PREFIX: Final = "sagemem-grant:"
DIRECTORY_BIRTH_KEY: Final = f"{DIRECTORY_PREFIX}:birth"
"""On a single server: the hash recording when this server's directory was born (first used
after the server started with no data; see `directory_birth_key` for a cluster's)."""


def l2_prefix(namespace: str) -> str:
    """The prefix of a namespace's L2 copies: `sagemem:{<namespace>}:`."""
    return f"{L2_PREFIX}:{{{namespace}}}:"


def directory_prefix(namespace: str) -> str:
    """The prefix of a namespace's directory keys: `sagemem-dir:{<namespace>}:`."""
    return f"{DIRECTORY_PREFIX}:{{{namespace}}}:"


def directory_birth_key(namespace: str) -> str:
    """On a cluster: the hash recording when a namespace's directory was born on the node that
    serves it, `sagemem-dir:{<namespace>}:born` (in the namespace's slot, as every key a
    script touches must be): the node's id (`CLUSTER MYID`) and its clock (ms) when that node
    first took a strict step of the namespace (a fill or a write's settling). A replica
    promoted by a failover is another node: the directory is born again there, since it may
    lack the last registrations."""
    return f"{DIRECTORY_PREFIX}:{{{namespace}}}:born"


def bus_prefix(namespace: str) -> str:
    """The prefix of a namespace's bus channels and counters: `sagemem-bus:{<namespace>}:`."""
    return f"{BUS_PREFIX}:{{{namespace}}}:"
