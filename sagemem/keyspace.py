"""Every Redis key space sagemem uses, in one place.

- `sagemem:<namespace>:<key>`: an L2 copy (`L2Tier`; the directory's leased fill writes the
  same key);
- `sagemem-dir:<namespace>:{lease,holders,acks,relayed}:<key>` and `sagemem-dir:born`: the
  coherence directory (`sagemem.coherence.directory`);
- `sagemem-bus:<namespace>:<agent>|<tag>|<key>` (channels) and `sagemem-bus:<namespace>:
  <agent>:seq` (sequence counters): the bus (`sagemem.coherence.messages`, `.bus`);
- `sagemem-grant:<...>`: the Redis users `sagemem.grants` creates.

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
    "directory_prefix",
    "l2_prefix",
]

L2_PREFIX: Final = "sagemem"
DIRECTORY_PREFIX: Final = "sagemem-dir"
BUS_PREFIX: Final = "sagemem-bus"
GRANT_USER_PREFIX: Final = "sagemem-grant:"
DIRECTORY_BIRTH_KEY: Final = f"{DIRECTORY_PREFIX}:born"
"""The key holding when this Redis server's directory was first used (server clock, ms)."""


def l2_prefix(namespace: str) -> str:
    """The prefix of a namespace's L2 copies: `sagemem:<namespace>:`."""
    return f"{L2_PREFIX}:{namespace}:"


def directory_prefix(namespace: str) -> str:
    """The prefix of a namespace's directory keys: `sagemem-dir:<namespace>:`."""
    return f"{DIRECTORY_PREFIX}:{namespace}:"


def bus_prefix(namespace: str) -> str:
    """The prefix of a namespace's bus channels and counters: `sagemem-bus:<namespace>:`."""
    return f"{BUS_PREFIX}:{namespace}:"
