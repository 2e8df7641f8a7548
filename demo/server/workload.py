"""The workload of a run: rounds of conflicting writes and reads per agent, each read checked
against the home's version, the baseline on plain `L1Tier`s, and the convergence check that
ends each round.
"""

from __future__ import annotations

import asyncio
import time

from sagemem.coherence.home import HomeRead
from sagemem.errors import SageMemError, VersionConflict
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.values import JSONValue

from .agents import _Agents
from .events import JSONObject
from .run_state import (
    _AGENT_WAIT_S,
    _BELIEFS,
    _CONVERGE_ATTEMPTS_MAX,
    AGENT_IDS,
    KEYS,
    PLAN,
    VOTES,
    WEATHER,
    OpKind,
    _Agent,
    _jsonable,
    _OffAgent,
)

__all__: list[str] = []  # internal parts of `DemoRun` (demo.server.run)


class _Workload(_Agents):
    """The rounds of operations, the baseline run and the end-of-round convergence check."""

    async def _rounds(self) -> None:
        for number in range(1, self.settings.rounds + 1):
            self.round = number
            self.phase = "disagree"
            self._publish_run()
            plans = {
                agent_id: self._plan(agent.index, number)
                for agent_id, agent in self._agents.items()
            }
            async with asyncio.TaskGroup() as group:
                for agent_id, plan in plans.items():
                    group.create_task(self._play(agent_id, plan), name=f"demo-{agent_id}")
            self.phase = "converge"
            self._publish_run()
            await self._converge(number)

    def _plan(self, index: int, number: int) -> list[tuple[OpKind, str]]:
        """The agent's operations for a round (seeded: the same for the baseline)."""
        rng = self._rng
        own = WEATHER if (index + number) % 2 == 0 else PLAN
        first: OpKind = "set" if rng.random() < 0.5 else "write_through"
        plan: list[tuple[OpKind, str]] = [(first, own)]
        other = PLAN if own == WEATHER else WEATHER
        plan.append(("read", other))
        plan.append(("cas", VOTES))
        if rng.random() < 0.5:
            plan.append(("read", own))
        return plan

    async def _pace(self) -> None:
        delay = self._delay_s
        if delay > 0:
            await asyncio.sleep(delay * self._pace_rng.uniform(0.5, 1.5))

    async def _agent(self, agent_id: str) -> _Agent:
        agent = self._agents[agent_id]
        if not agent.available.is_set():
            async with asyncio.timeout(_AGENT_WAIT_S):
                await agent.available.wait()
            agent = self._agents[agent_id]
        return agent

    async def _play(self, agent_id: str, plan: list[tuple[OpKind, str]]) -> None:
        for op, key in plan:
            await self._pace()
            await self._gate.wait_turn()
            await self._operate(agent_id, op, key)

    def _belief(self, agent_id: str, key: str) -> str:
        index = AGENT_IDS.index(agent_id)
        return _BELIEFS[key][index]

    async def _operate(self, agent_id: str, op: OpKind, key: str) -> None:
        """One agent operation on the coherent run, then the same on the baseline."""
        agent = await self._agent(agent_id)
        l1 = agent.l1
        data: JSONObject = {"run": self.run_number, "agent": agent_id, "op": op, "key": key}
        mirrored: JSONValue = None
        try:
            match op:
                case "set":
                    value = self._belief(agent_id, key)
                    data["value"] = value
                    data["version"] = await l1.set(key, value)
                    data["state"] = l1.get_state(key).name
                    self._coherent.writes += 1
                    mirrored = value
                case "write_through":
                    value = self._belief(agent_id, key)
                    data["value"] = value
                    data["version"] = await l1.write_through(key, value)
                    self._coherent.writes += 1
                    mirrored = value
                case "cas":
                    current = await self._checked_read(agent_id, l1, key, data)
                    count = current.value if current is not None else 0
                    expected = None if current is None else current.version
                    new = (count if isinstance(count, int) else 0) + 1
                    data["value"] = new
                    data["expected_version"] = expected
                    try:
                        data["version"] = await l1.compare_and_swap(key, new, expected)
                        self._coherent.writes += 1
                    except VersionConflict as conflict:
                        self._coherent.conflicts += 1
                        data["conflict"] = {
                            "expected": conflict.expected,
                            "actual": conflict.actual,
                        }
                case "read":
                    await self._checked_read(agent_id, l1, key, data)
        except SageMemError as error:
            data["error"] = f"{type(error).__name__}: {error}"
        self.hub.publish("op", data)
        self._home_dirty.set()
        if self.settings.compare_off:
            await self._operate_off(agent_id, op, key, mirrored)

    async def _checked_read(
        self, agent_id: str, l1: CoherentL1Tier, key: str, data: JSONObject
    ) -> TierEntry | None:
        """Read through the protocol; stale if older than the home's version just before."""
        store = self._monitor_store
        assert store is not None
        before: HomeRead = await store.read(key)
        entry, source = await l1.read_from(key)
        version = 0 if entry is None else entry.version or 0
        stale = version < before.version
        self._coherent.reads += 1
        if stale:
            self._coherent.stale_reads += 1
        data.update(
            {
                "read_value": None if entry is None else _jsonable(entry.value),
                "read_version": None if entry is None else entry.version,
                "source": ("L1", "L2", "home")[source],
                "home_version_before": before.version,
                "stale": stale,
                "state": l1.get_state(key).name,
            }
        )
        return entry

    async def _operate_off(self, agent_id: str, op: OpKind, key: str, value: JSONValue) -> None:
        off, l3 = self._off.get(agent_id), self._off_l3
        if off is None or l3 is None:
            return
        data: JSONObject = {"run": self.run_number, "agent": agent_id, "op": op, "key": key}
        try:
            if op in ("set", "write_through"):
                data["version"] = await off.hierarchy.set(key, value, tier_index=2)
                data["value"] = _jsonable(value)
                self._baseline.writes += 1
            else:
                entry = await self._off_read(off, key, data)
                if op == "cas":
                    count = 0 if entry is None else entry.value
                    new = (count if isinstance(count, int) else 0) + 1
                    expected = None if entry is None else entry.version
                    data["value"] = new
                    try:
                        data["version"] = await off.hierarchy.compare_and_swap(key, new, expected)
                        self._baseline.writes += 1
                    except VersionConflict as conflict:
                        self._baseline.conflicts += 1
                        data["conflict"] = {
                            "expected": conflict.expected,
                            "actual": conflict.actual,
                        }
        except SageMemError as error:
            data["error"] = f"{type(error).__name__}: {error}"
        await self._off_snapshot(off)
        self.hub.publish(
            "off",
            {**data, "l1": self._off_l1[agent_id], "baseline": self._baseline.to_json()},
        )

    async def _off_read(self, off: _OffAgent, key: str, data: JSONObject) -> TierEntry | None:
        l3 = self._off_l3
        assert l3 is not None
        before = await l3.version(key) or 0
        entry = await off.hierarchy.read(key)
        version = 0 if entry is None else entry.version or 0
        stale = version < before
        self._baseline.reads += 1
        if stale:
            self._baseline.stale_reads += 1
        data.update(
            {
                "read_value": None if entry is None else _jsonable(entry.value),
                "read_version": None if entry is None else entry.version,
                "home_version_before": before,
                "stale": stale,
            }
        )
        return entry

    async def _off_snapshot(self, off: _OffAgent) -> None:
        """The baseline agent's L1 contents (what it would serve without asking anyone)."""
        view: dict[str, JSONObject] = {}
        for key in KEYS:
            cached = await off.l1.read(key)
            if cached is not None:
                view[key] = {"value": _jsonable(cached.value), "version": cached.version}
        self._off_l1[off.agent_id] = view

    async def _converge(self, number: int) -> None:
        """Every agent reads every key (through the protocol) until all agree with the home."""
        async with self._converge_lock:
            await self._converge_locked(number)

    async def _converge_locked(self, number: int) -> None:
        attempts = 0
        while True:
            attempts += 1
            reads: dict[str, dict[str, tuple[object, int | None]]] = {}

            async with asyncio.TaskGroup() as group:
                for agent_id in self._agents:
                    group.create_task(self._read_all(agent_id, reads))
            await self._sample_home()
            keys: JSONObject = {}
            converged = True
            for key in KEYS:
                seen = {reads[a][key] for a in reads}
                home_version = self._home.get(key, {}).get("version")
                agreed = len(seen) == 1 and next(iter(seen))[1] == (home_version or None)
                value, version = next(iter(seen)) if len(seen) == 1 else (None, None)
                keys[key] = {
                    "agreed": agreed,
                    "value": value,
                    "version": version,
                    "home_version": home_version,
                    "views": {
                        a: {"value": reads[a][key][0], "version": reads[a][key][1]} for a in reads
                    },
                }
                converged = converged and agreed
            result: JSONObject = {
                "run": self.run_number,
                "round": number,
                "converged": converged,
                "attempt": attempts,
                "keys": keys,
                "elapsed_s": round(time.monotonic() - self.started_at, 2),
            }
            self._last_converged = result
            self.hub.publish("converged", result)
            if converged:
                self._settle_faults(result)
            if converged or attempts >= _CONVERGE_ATTEMPTS_MAX:
                break
        if self.settings.compare_off:
            await self._converge_off(number)

    async def _read_all(
        self, agent_id: str, reads: dict[str, dict[str, tuple[object, int | None]]]
    ) -> None:
        """One agent reads every key (a convergence check), through the protocol."""
        views: dict[str, tuple[object, int | None]] = {}
        for key in KEYS:
            await self._gate.wait_turn()
            agent = await self._agent(agent_id)
            data: JSONObject = {
                "run": self.run_number,
                "agent": agent_id,
                "op": "read",
                "key": key,
                "phase": "converge",
            }
            try:
                entry = await self._checked_read(agent_id, agent.l1, key, data)
                views[key] = (
                    (None, None) if entry is None else (_jsonable(entry.value), entry.version)
                )
            except SageMemError as error:
                data["error"] = f"{type(error).__name__}: {error}"
                views[key] = ("<error>", None)
            self.hub.publish("op", data)
        reads[agent_id] = views

    async def _converge_off(self, number: int) -> None:
        """The baseline's agents read every key too: without invalidation they may disagree."""
        views: dict[str, JSONObject] = {}
        for agent_id, off in self._off.items():
            view: JSONObject = {}
            for key in KEYS:
                data: JSONObject = {"run": self.run_number, "agent": agent_id, "op": "read"}
                entry = await self._off_read(off, key, data)
                view[key] = {
                    "value": None if entry is None else _jsonable(entry.value),
                    "version": None if entry is None else entry.version,
                    "stale": data["stale"],
                }
            views[agent_id] = view
            await self._off_snapshot(off)
        agreed = all(
            len({repr(self._strip_stale(views[a], key)) for a in views}) == 1 for key in KEYS
        )
        result: JSONObject = {
            "run": self.run_number,
            "round": number,
            "converged": agreed,
            "views": views,
            "baseline": self._baseline.to_json(),
        }
        self._last_off_converged = result
        self.hub.publish("off_converged", result)

    @staticmethod
    def _strip_stale(view: JSONObject, key: str) -> object:
        found = view[key]
        assert isinstance(found, dict)
        return (found["value"], found["version"])
