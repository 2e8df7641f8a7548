"""Faults injected from the page: dropping an agent's bus connection, killing an agent that
holds Modified data, and the restart and recovery that follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

from sagemem.errors import SageMemError
from sagemem.spec.vocabulary import L1State

from .events import JSONObject
from .run_state import (
    _RESTART_DELAY_S,
    KEYS,
    WEATHER,
    FaultError,
    _Agent,
    _jsonable,
    _version_or_none,
)
from .workload import _Workload

__all__: list[str] = []  # internal parts of `DemoRun` (demo.server.run)


class _Faults(_Workload):
    """Dropping a connection, killing an agent, and restarting and recovering after either."""

    async def drop_connection(self, agent_id: str) -> JSONObject:
        """Kill `agent_id`'s bus pub/sub connection with CLIENT KILL (the library reconnects)."""
        agent = self._agents.get(agent_id)
        if agent is None or not agent.available.is_set():
            raise FaultError(f"no running agent {agent_id!r}; agents: {list(self._agents)}")
        raw = self._raw
        assert raw is not None
        async with self._agent_lock:
            current = await self._bus_client_ids()
            if agent.client_id not in current:
                # The bus reconnected since: its new connection is the one nobody else has.
                others = {a.client_id for a in self._agents.values() if a is not agent}
                unknown = current - others
                if len(unknown) != 1:
                    raise FaultError(
                        f"cannot tell which Redis client is {agent_id}'s pub/sub connection "
                        f"(candidates {sorted(unknown)}); try again in a second"
                    )
                agent.client_id = next(iter(unknown))
            killed = await raw.client_kill_filter(_id=agent.client_id, _type="pubsub")
            if not killed:  # not subscribed yet (between connect and SUBSCRIBE): kill anyway
                killed = await raw.client_kill_filter(_id=agent.client_id)
        fault: JSONObject = {
            "run": self.run_number,
            "fault": "drop_connection",
            "agent": agent_id,
            "redis_client_id": agent.client_id,
            "killed": int(killed),
            "command": f"CLIENT KILL ID {agent.client_id} TYPE pubsub",
        }
        self._record_fault(fault)
        self._spawn(self._recover(), f"demo-recover-{agent_id}")
        return fault

    def _spawn(self, coroutine: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def kill_agent(self, agent_id: str | None) -> JSONObject:
        """Crash an agent holding a Modified entry (`abandon()`: no write-back), restart it.

        With no agent named, the first agent holding an M entry is chosen; if none does, the
        first agent takes ownership of a key (`set`) first, so that there is data to lose."""
        candidates = [agent_id] if agent_id is not None else list(self._agents)
        for candidate in candidates:
            if candidate not in self._agents:
                raise FaultError(f"no agent {candidate!r}; agents: {list(self._agents)}")
        victim: _Agent | None = None
        for candidate in candidates:
            agent = self._agents[candidate]
            if agent.available.is_set() and any(
                agent.l1.get_state(key) is L1State.M for key in KEYS
            ):
                victim = agent
                break
        if victim is None:
            agent = self._agents[candidates[0]]
            if not agent.available.is_set():
                raise FaultError(f"agent {agent.agent_id} is not running")
            value = self._belief(agent.agent_id, WEATHER)
            await agent.l1.set(WEATHER, value)
            self.hub.publish(
                "op",
                {
                    "run": self.run_number,
                    "agent": agent.agent_id,
                    "op": "set",
                    "key": WEATHER,
                    "value": value,
                    "state": agent.l1.get_state(WEATHER).name,
                    "phase": "fault",
                },
            )
            victim = agent
        lost: list[JSONObject] = []
        for key in KEYS:
            entry = victim.l1.core.snapshot(key)
            if entry.state is L1State.M:
                lost.append(
                    {
                        "key": key,
                        "version": _version_or_none(entry.version),
                        "value": _jsonable(entry.value),
                    }
                )
        victim.status = "crashed"
        await self._close_agent(victim, orderly=False)
        old_incarnation = victim.l1.incarnation
        fault: JSONObject = {
            "run": self.run_number,
            "fault": "kill",
            "agent": victim.agent_id,
            "incarnation": old_incarnation,
            "lost_modified": lost,
            "restart_in_s": _RESTART_DELAY_S,
        }
        self._record_fault(fault)
        self.hub.publish(
            "agent",
            {"agent": victim.agent_id, "incarnation": old_incarnation, "status": "crashed"},
        )
        self._spawn(self._restart(victim), f"demo-restart-{victim.agent_id}")
        return fault

    async def _restart(self, victim: _Agent) -> None:
        await asyncio.sleep(_RESTART_DELAY_S)
        try:
            agent = await self._start_agent(
                victim.agent_id, victim.index, victim.incarnation_count + 1
            )
        except SageMemError as error:
            self.hub.publish("error", {"run": self.run_number, "message": str(error)})
            return
        self._entries[victim.agent_id] = {}
        self._agents[victim.agent_id] = agent
        victim.available.set()  # wake anyone who waited on the old record: they re-read it
        await self._recover()

    async def _recover(self) -> None:
        """After a fault on a finished run, check convergence once more (the reads recall the
        dead owner, wait for its lease to lapse, and refetch), so the recovery is visible."""
        if self.status == "finished":
            self.phase = "recovery"
            self._publish_run()
            await self._converge(self.round)
