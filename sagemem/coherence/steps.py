"""`ServerSteps`: the servers' half of one agent's protocol, as one replaceable object.

Every step the driver of `CoherentL1Tier` asks of a server goes through this object: the home's
statements (`HomeStore`, on Postgres), the directory's scripts (`RedisDirectory`, on Redis) and
recalls on the bus. Each method is one server step of the spec (its name says which); none
decides anything (the answers are read by `sagemem.coherence.answers` and the core).

On sharded pub/sub (`CoherenceBus(pubsub="sharded")`, the default on a cluster) an agent
receives only the messages about keys it follows: the steps that can make the agent a holder
(a fill, DIRECTORY_ADD_HOLDER) or an owner (HOME_ACQUIRE, whose recalls it must receive) first
follow the key on the bus; `leave` and `forget` stop following. With classic pub/sub nothing is
followed.

A test replaces steps without touching the tier's private attributes: pass
`CoherentL1Tier(..., server_steps=factory)` where `factory(home, directory, bus)` returns a
subclass that overrides a step (pause it, lose its reply, count it) and calls `super()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.directory import (
    NO_VALUE,
    RELAY_L2_DELETE,
    RELAY_L2_SET,
    RELAY_PUBLISH,
    RELAY_PUBLISH_AWAIT_ACKS,
    RELAY_PUBLISH_UPDATES,
    FillStep,
    NoValue,
    RedisDirectory,
    Relayed,
)
from sagemem.coherence.home import CommitAnswer, HomeRead, HomeStore, owner_agent
from sagemem.spec.vocabulary import Effect, Guard
from sagemem.values import JSONValue

__all__ = ["REDIS_RELAY_EFFECTS", "ServerSteps", "ServerStepsFactory"]

REDIS_RELAY_EFFECTS: Final[dict[Effect, str]] = {
    Effect.L2_DELETE: RELAY_L2_DELETE,
    Effect.L2_SET_IF_NEWER: RELAY_L2_SET,
    Effect.PUBLISH_INVALIDATIONS: RELAY_PUBLISH,
    Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS: RELAY_PUBLISH_AWAIT_ACKS,
    Effect.PUBLISH_UPDATES: RELAY_PUBLISH_UPDATES,
}
"""The OUTBOX_RELAY effects the relay script performs (consecutive ones in one atomic call)."""


class ServerSteps:
    """The home, the directory and the bus steps one agent performs (borrowed, never closed)."""

    def __init__(self, home: HomeStore, directory: RedisDirectory, bus: CoherenceBus) -> None:
        self.home: Final = home
        self.directory: Final = directory
        self.bus: Final = bus

    # -- FILL_FETCH and FILL_DATA ---------------------------------------------------------------

    async def fill(
        self,
        key: str,
        agent_id: str,
        *,
        strict: bool,
        register_on_hit: bool = True,
        register_on_miss: bool = True,
        holders_lapse: bool = True,
        read_on_hit: bool = True,
        lease_on_miss: bool = True,
        directory_settled_s: float = 0.0,
    ) -> FillStep:
        """The fill script: register as holder (where the entry's rows say), L2 get, else a fill
        lease (strict: or wait, also while the directory is younger than
        `directory_settled_s`), each where the entry's rows say; lapsed registrations and acks
        dropped first if `holders_lapse` (the HOLDER_EXPIRE row)."""
        if self.bus.sharded and (register_on_hit or register_on_miss):
            await self.bus.follow(agent_id, (key,))
        return await self.directory.fill(
            key,
            agent_id,
            strict=strict,
            register_on_hit=register_on_hit,
            register_on_miss=register_on_miss,
            holders_lapse=holders_lapse,
            read_on_hit=read_on_hit,
            lease_on_miss=lease_on_miss,
            directory_settled_s=directory_settled_s,
        )

    async def home_read(self, key: str) -> HomeRead:
        """HOME_READ: the home's version, value, owner (and its lapse) and outbox."""
        return await self.home.read(key)

    async def leased_fill(
        self, key: str, agent_id: str, token: str, version: int, value: JSONValue
    ) -> bool:
        """L2_LEASED_FILL: store the fetched copy in L2 if the fill lease is still valid."""
        return await self.directory.leased_fill(key, agent_id, token, version, value)

    # -- the home --------------------------------------------------------------------------------

    async def commit(self, key: str, value: JSONValue, me: str, operation_id: str) -> CommitAnswer:
        """HOME_COMMIT of a write-through or delete (idempotent per `operation_id`)."""
        return await self.home.commit(key, value, me, operation_id)

    async def commit_if(
        self, key: str, value: JSONValue, me: str, expected: int | None, operation_id: str
    ) -> CommitAnswer:
        """HOME_COMMIT of a compare-and-swap (idempotent, never without its version check)."""
        return await self.home.commit_if(key, value, me, expected, operation_id)

    async def acquire(self, key: str, me: str, lease_ms: int) -> CommitAnswer:
        """HOME_ACQUIRE: grant ownership and reserve a version, or name the owner."""
        if self.bus.sharded:
            await self.bus.follow(owner_agent(me), (key,))
        return await self.home.acquire(key, me, lease_ms)

    async def write_back(
        self, key: str, me: str, epoch: int, value: JSONValue, *, keep_ms: int | None = None
    ) -> Guard:
        """HOME_WRITE_BACK (release), or HOME_FLUSH with `keep_ms` (keep the grant)."""
        return await self.home.write_back(key, me, epoch, value, keep_ms=keep_ms)

    async def ownership(self, key: str, me: str) -> CommitAnswer:
        """The branch of a commit or grant request without its effect (a row that names no
        home statement): OWNED_BY_OTHER with the owner, else NOT_OWNED_BY_OTHER with the
        home's current version; nothing is written."""
        row = await self.home.read(key)
        if row.owner is not None and row.owner != me:
            return CommitAnswer(
                Guard.OWNED_BY_OTHER, None, row.owner, row.owner_lapsed, owner_epoch=row.version
            )
        return CommitAnswer(Guard.NOT_OWNED_BY_OTHER, row.version)

    async def grant_held(self, key: str, me: str, epoch: int) -> Guard:
        """GRANT_HELD if the home still records `me`'s grant of `epoch`, else GRANT_LOST
        (a write-back or flush whose row names no store statement writes nothing)."""
        row = await self.home.read(key)
        held = row.owner == me and row.version == epoch
        return Guard.GRANT_HELD if held else Guard.GRANT_LOST

    async def renew(self, keys: list[str], me: str, lease_ms: int) -> set[str]:
        """Renew this incarnation's grants; returns the keys it still owns."""
        return await self.home.renew(keys, me, lease_ms)

    async def revoke(self, key: str, owner: str) -> bool:
        """HOME_EXPIRE_OWNER / HOME_REVOKE_GRANT of `owner`, whose lease lapsed."""
        return await self.home.revoke(key, owner)

    async def outbox(self, key: str) -> int | None:
        """The version whose invalidations are still to be relayed (None: none)."""
        return await self.home.outbox(key)

    async def clear_outbox(self, key: str, version: int) -> bool:
        """The last half of OUTBOX_RELAY; True if the outbox is empty afterwards."""
        return await self.home.clear_outbox(key, version)

    async def stale_outboxes(self, older_than_ms: int) -> list[tuple[str, int]]:
        """Outboxes left by writers that died before relaying (the sweep's work)."""
        return await self.home.stale_outboxes(older_than_ms)

    # -- the directory and the bus ---------------------------------------------------------------

    async def relay(
        self,
        key: str,
        version: int,
        sender: str,
        effects: tuple[Effect, ...],
        *,
        holders_lapse: bool,
        value: JSONValue | NoValue = NO_VALUE,
    ) -> tuple[tuple[Effect, ...], tuple[str, ...]]:
        """Redis effects of OUTBOX_RELAY or OUTBOX_RELAY_UPDATE (`REDIS_RELAY_EFFECTS`), in
        order, in one script; returns the effects the script reports it performed and the
        agents it messaged. `holders_lapse`: whether HOLDER_EXPIRE applies (lapsed holders
        dropped, acks lapse); `value`: the committed value an update carries."""
        relayed: Relayed = await self.directory.relay(
            key,
            version,
            sender,
            [REDIS_RELAY_EFFECTS[e] for e in effects],
            holders_lapse=holders_lapse,
            value=value,
        )
        by_letter = {letter: effect for effect, letter in REDIS_RELAY_EFFECTS.items()}
        return tuple(by_letter[letter] for letter in relayed.performed), relayed.messaged

    async def settle_facts(self, key: str) -> tuple[tuple[str, ...], float]:
        """Strict settling's facts: the acks owed and the directory's age in seconds."""
        return await self.directory.settle_facts(key)

    async def pending_acks(self, key: str) -> tuple[str, ...]:
        """The holders that still owe an acknowledgement for the key."""
        return await self.directory.pending_acks(key)

    async def expire_lapsed(self, key: str) -> tuple[str, ...]:
        """DIRECTORY_EXPIRE: drop holders (and their owed acks) whose read lease lapsed."""
        return await self.directory.expire_lapsed(key)

    async def ack(self, key: str, agent_id: str) -> bool:
        """SEND_ACK: this holder acknowledges an invalidation."""
        return await self.directory.ack(key, agent_id)

    async def add_holder(self, key: str, agent_id: str, *, holders_lapse: bool = True) -> bool:
        """DIRECTORY_ADD_HOLDER; False if the holder set is full (the copy is not served)."""
        if self.bus.sharded:
            await self.bus.follow(agent_id, (key,))
        return await self.directory.add_holder(key, agent_id, holders_lapse=holders_lapse)

    async def remove_holder(self, key: str, agent_id: str) -> bool:
        """DIRECTORY_REMOVE_HOLDER."""
        return await self.directory.remove_holder(key, agent_id)

    async def leave(self, keys: Sequence[str], agent_id: str) -> None:
        """On close: drop the agent's registrations and owed acks for `keys`, then stop
        following them on the bus."""
        await self.directory.leave(keys, agent_id)
        if self.bus.sharded:
            await self.bus.unfollow(agent_id, keys)

    async def forget(self, keys: Sequence[str], agent_id: str) -> None:
        """The agent forgot `keys` (no copy, nothing in flight, idle for long): stop following
        them on the bus. Transport only: no server step of the spec."""
        if self.bus.sharded:
            await self.bus.unfollow(agent_id, keys)

    async def recall(
        self, key: str, owner_agent: str, *, sender: str, owner_epoch: int | None
    ) -> int:
        """SEND_RECALL to the owner's agent channel, tagged with the grant's epoch."""
        return await self.bus.publish_recall(
            key, [owner_agent], sender=sender, owner_epoch=owner_epoch
        )


type ServerStepsFactory = Callable[[HomeStore, RedisDirectory, CoherenceBus], ServerSteps]
