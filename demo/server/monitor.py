"""What the library reports, published to the page: traced rows, messages, samples of the
home and the L2 copy, statistics, the run's description and the fault panel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

from sagemem.coherence.core import TraceRecord
from sagemem.coherence.home import ABSENT, owner_agent
from sagemem.errors import SageMemError
from sagemem.spec.vocabulary import Effect, Event
from sagemem.tiers.l1_coherent import CoherentL1Tier

from .events import JSONObject
from .run_state import (
    _MONITOR_INTERVAL_S,
    _STATS_INTERVAL_S,
    AGENT_IDS,
    KEYS,
    _Agent,
    _jsonable,
    _logger,
    _RunState,
    _version_or_none,
)

__all__: list[str] = []  # internal parts of `DemoRun` (demo.server.run)


class _Monitor(_RunState):
    """What the library reports (tracer, home and L2 samples, statistics, faults) to the page."""

    def _tracer(self, agent: _Agent, l1: CoherentL1Tier) -> Callable[[TraceRecord], None]:
        def trace(record: TraceRecord) -> None:
            if agent.l1 is not l1:
                return  # a previous incarnation, finishing after its replacement started
            self._on_trace(agent, l1, record)

        return trace

    def _on_trace(self, agent: _Agent, l1: CoherentL1Tier, record: TraceRecord) -> None:
        """Publish one executed row, the entry it left, and the messages it sent or received."""
        entry = l1.core.snapshot(record.key)
        effects = [effect.name for effect in record.effects]
        payload = record.payload
        view: JSONObject = {
            "state": entry.state.name,
            "version": _version_or_none(entry.version),
            "value": _jsonable(entry.value),
        }
        self._entries.setdefault(agent.agent_id, {})[record.key] = view
        self.hub.publish(
            "trace",
            {
                "run": self.run_number,
                "agent": agent.agent_id,
                "incarnation": l1.incarnation,
                "key": record.key,
                "source": record.source.name,
                "event": record.event.name,
                "guard": record.guard.name,
                "target": record.target.name,
                "effects": effects,
                "payload_version": payload.version,
                "entry": view,
            },
        )
        self._home_dirty.set()
        committed = Effect.HOME_COMMIT_VERSION in record.effects
        reserved = Effect.HOME_RESERVE_AND_GRANT in record.effects
        if (committed or reserved) and payload.version is not None:
            self._writers[(record.key, payload.version)] = agent.agent_id
            self._committed[(agent.agent_id, record.key)] = payload.version
        stats = l1.statistics()
        if stats.invalidations_sent > agent.invalidations_seen:
            count = stats.invalidations_sent - agent.invalidations_seen
            agent.invalidations_seen = stats.invalidations_sent
            version = self._committed.get((agent.agent_id, record.key))
            self._message(
                "INVALIDATE",
                "sent",
                key=record.key,
                sender=agent.agent_id,
                receiver=None,
                version=version,
                count=count,
                row="HOME OUTBOX_RELAY -> PUBLISH_INVALIDATIONS",
            )
        if record.event is Event.DELIVER_INVALIDATE:
            version = payload.version
            sender = self._writers.get((record.key, version or 0), "home")
            self._message(
                "INVALIDATE",
                "delivered",
                key=record.key,
                sender=sender,
                receiver=agent.agent_id,
                version=version,
                row=f"{record.source.name} DELIVER_INVALIDATE -> {record.target.name}",
            )
        if Effect.SEND_RECALL in record.effects:
            owner = self._home.get(record.key, {}).get("owner")
            self._recallers[record.key] = agent.agent_id
            self._message(
                "RECALL",
                "sent",
                key=record.key,
                sender=agent.agent_id,
                receiver=owner if isinstance(owner, str) else None,
                version=payload.owner_epoch,
                row=f"{record.source.name} {record.event.name} -> SEND_RECALL",
            )
        if record.event is Event.DELIVER_RECALL:
            self._message(
                "RECALL",
                "delivered",
                key=record.key,
                sender=self._recallers.get(record.key),
                receiver=agent.agent_id,
                version=payload.owner_epoch,
                row=f"{record.source.name} DELIVER_RECALL -> {record.target.name}",
            )
        if Effect.SEND_ACK in record.effects and stats.acks_sent > agent.acks_seen:
            agent.acks_seen = stats.acks_sent
            version = payload.version
            self._message(
                "ACK",
                "sent",
                key=record.key,
                sender=agent.agent_id,
                receiver=self._writers.get((record.key, version or 0)),
                version=version,
                row=f"{record.source.name} {record.event.name} -> SEND_ACK",
            )

    def _message(
        self,
        kind: str,
        phase: str,
        *,
        key: str,
        sender: str | None,
        receiver: str | None,
        version: int | None,
        row: str,
        count: int = 1,
    ) -> None:
        self.hub.publish(
            "message",
            {
                "run": self.run_number,
                "type": kind,
                "phase": phase,
                "key": key,
                "from": sender,
                "to": receiver,
                "version": version,
                "count": count,
                "row": row,
            },
        )

    async def _monitor(self) -> None:
        """Read the home (L3) and the L2 copies back; publish them when they change."""
        last_stats = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_MONITOR_INTERVAL_S):
                    await self._home_dirty.wait()
            self._home_dirty.clear()
            try:
                await self._sample_home()
            except SageMemError as error:
                _logger.warning("demo monitor: %s", error)
            now = time.monotonic()
            if now - last_stats >= _STATS_INTERVAL_S:
                last_stats = now
                self._publish_stats()
            # Bound the sampling rate whatever the trace rate.
            await asyncio.sleep(0.05)

    async def _sample_home(self) -> None:
        store, l2 = self._monitor_store, self._monitor_l2
        if store is None or l2 is None:
            return
        for key in KEYS:
            found = await store.read(key)
            home: JSONObject = {
                "version": found.version,
                "value": _jsonable(found.value),
                "exists": found.value is not ABSENT,
                "owner": None if found.owner is None else owner_agent(found.owner),
                "owner_token": found.owner,
                "outbox": found.outbox,
            }
            if self._home.get(key) != home:
                self._home[key] = home
                self.hub.publish("home", {"run": self.run_number, "key": key, **home})
            cached = await l2.read(key)
            copy: JSONObject = (
                {"version": None, "value": None, "present": False}
                if cached is None
                else {"version": cached.version, "value": _jsonable(cached.value), "present": True}
            )
            if self._l2.get(key) != copy:
                self._l2[key] = copy
                self.hub.publish("l2", {"run": self.run_number, "key": key, **copy})

    def _publish_stats(self) -> None:
        agents: JSONObject = {}
        for agent_id, agent in self._agents.items():
            stats = agent.l1.statistics()
            bus = agent.bus.statistics()
            agents[agent_id] = {
                "hits": stats.hits,
                "misses": stats.misses,
                "invalidations_sent": stats.invalidations_sent,
                "invalidations_received": stats.invalidations_received,
                "recalls_sent": stats.recalls_sent,
                "recalls_received": stats.recalls_received,
                "acks_sent": stats.acks_sent,
                "conflicts": stats.conflicts,
                "fenced_writes": stats.fenced_writes,
                "disconnects": stats.disconnects,
                "resyncs": stats.resyncs,
                "bus_reconnects": bus.reconnects,
            }
        self.hub.publish(
            "stats",
            {
                "run": self.run_number,
                "agents": agents,
                "coherent": self._coherent.to_json(),
                "baseline": self._baseline.to_json(),
            },
        )

    def _publish_run(self) -> None:
        self.hub.publish("run", self.describe())

    def describe(self) -> JSONObject:
        """The run's settings and progress."""
        return {
            "run": self.run_number,
            "mode": self.settings.mode.value,
            "agents": [AGENT_IDS[i] for i in range(self.settings.agents)],
            "status": self.status,
            "paused": self._gate.paused,
            "round": self.round,
            "rounds": self.settings.rounds,
            "phase": self.phase,
            "delay_ms": round(self._delay_s * 1000),
            "namespace": self.namespace,
            "schema": self.schema,
            "compare_off": self.settings.compare_off,
            "elapsed_s": round(time.monotonic() - self.started_at, 2),
            "finished_in_s": None if self.finished_in_s is None else round(self.finished_in_s, 2),
        }

    def snapshot(self) -> JSONObject:
        """Everything the page draws, as of now (sent first on every SSE connection)."""
        agents: JSONObject = {}
        for agent_id, agent in self._agents.items():
            agents[agent_id] = {
                "incarnation": agent.l1.incarnation,
                "incarnations": agent.incarnation_count,
                "status": agent.status,
                "entries": dict(self._entries.get(agent_id, {})),
            }
        return {
            "run": self.describe(),
            "keys": list(KEYS),
            "agents": agents,
            "home": dict(self._home),
            "l2": dict(self._l2),
            "off": {a: dict(e) for a, e in self._off_l1.items()},
            "coherent": self._coherent.to_json(),
            "baseline": self._baseline.to_json(),
            "converged": self._last_converged,
            "off_converged": self._last_off_converged,
            "faults": [dict(fault) for fault in self._faults],
        }

    def _record_fault(self, fault: JSONObject) -> None:
        """Number `fault`, note when it happened, keep it (the page's fault panel) and publish
        it; its outcome is filled in when the agents next agree (`_settle_faults`)."""
        fault["id"] = len(self._faults) + 1
        fault["at_s"] = round(time.monotonic() - self.started_at, 2)
        fault["recovered_in_s"] = None
        fault["outcome"] = None
        self._faults.append(fault)
        self.hub.publish("fault", dict(fault))

    def _settle_faults(self, converged: JSONObject) -> None:
        """Give each fault still recovering, whose agent runs again, its outcome: how long the
        recovery took (fault to the first round where every agent agrees with the home) and
        what the lost Modified data became."""
        keys = converged["keys"]
        assert isinstance(keys, dict)
        now_s = time.monotonic() - self.started_at
        for fault in self._faults:
            if fault["outcome"] is not None:
                continue
            agent = self._agents.get(str(fault["agent"]))
            if agent is None or agent.status != "running" or not agent.available.is_set():
                continue
            at_s = fault["at_s"]
            assert isinstance(at_s, float | int)
            parts = [
                f"recovered: every agent agrees with the home again (round {converged['round']})"
            ]
            lost = fault.get("lost_modified") or []
            assert isinstance(lost, list)
            for item in lost:
                home = keys.get(item["key"], {})
                parts.append(
                    f"{item['key']} v{item['version']} {json.dumps(item['value'])} was never "
                    f"written back; the home kept v{home.get('home_version')} "
                    f"{json.dumps(home.get('value'))}"
                )
            if fault["fault"] == "kill" and not lost:
                parts.append("no Modified data was lost")
            fault["recovered_in_s"] = round(now_s - at_s, 2)
            fault["outcome"] = "; ".join(parts)
            self.hub.publish(
                "fault_outcome",
                {
                    "run": self.run_number,
                    "id": fault["id"],
                    "recovered_in_s": fault["recovered_in_s"],
                    "outcome": fault["outcome"],
                },
            )
