"""A compiled LangGraph graph with a `SageMemStore`: nodes reach it through the runtime, in
async and sync runs, and parallel nodes that increment one item with `expected_version` lose
no update."""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from sagemem.integrations.langgraph import ItemVersionConflict, SageMemStore
from sagemem.services import ServiceEndpoints

BRANCHES = 5
RETRIES_MAX = 50


class State(TypedDict):
    tries: Annotated[list[int], operator.add]


async def _increment(runtime: Runtime[None]) -> int:
    store = runtime.store
    assert isinstance(store, SageMemStore)
    for attempt in range(1, RETRIES_MAX + 1):
        item = await store.aget_versioned(("team",), "counter")
        assert item is not None
        try:
            await store.aput(
                ("team",), "counter", {"n": item.value["n"] + 1}, expected_version=item.version
            )
            return attempt
        except ItemVersionConflict:
            await asyncio.sleep(0)
    raise AssertionError(f"no increment after {RETRIES_MAX} attempts")


def _fan_out_graph() -> Any:
    builder = StateGraph(State)

    async def branch(state: State, runtime: Runtime[None]) -> dict[str, list[int]]:
        return {"tries": [await _increment(runtime)]}

    for n in range(BRANCHES):
        builder.add_node(f"branch{n}", branch)
        builder.add_edge(START, f"branch{n}")
        builder.add_edge(f"branch{n}", END)
    return builder


async def test_parallel_nodes_increment_one_item_without_losing_an_update(
    service_endpoints: ServiceEndpoints, namespace: str
) -> None:
    """BRANCHES parallel nodes each add 1 through the store: the counter ends at BRANCHES."""
    async with SageMemStore(namespace=namespace) as store:
        await store.aput(("team",), "counter", {"n": 0})
        graph = _fan_out_graph().compile(store=store)
        result = await graph.ainvoke({"tries": []}, version="v2")
        assert len(result.value["tries"]) == BRANCHES
        final = await store.aget(("team",), "counter")
        assert final is not None
        assert final.value == {"n": BRANCHES}


async def test_a_sync_graph_run_writes_what_another_agents_store_reads(
    service_endpoints: ServiceEndpoints, namespace: str
) -> None:
    """graph.invoke (the sync half) stores a memory that a second store on the namespace reads."""
    builder = StateGraph(State)

    def remember(state: State, runtime: Runtime[None]) -> dict[str, list[int]]:
        assert runtime.store is not None
        runtime.store.put(("users", "7"), "likes", {"food": "pizza"})
        item = runtime.store.get(("users", "7"), "likes")
        assert item is not None
        return {"tries": [len(item.value)]}

    builder.add_node("remember", remember)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", END)
    async with (
        SageMemStore(namespace=namespace, agent_id="graph") as store,
        SageMemStore(namespace=namespace, agent_id="reader") as reader,
    ):
        graph = builder.compile(store=store)
        result = await asyncio.to_thread(lambda: graph.invoke({"tries": []}, version="v2"))
        assert result.value == {"tries": [1]}
        item = await reader.aget(("users", "7"), "likes")
        assert item is not None
        assert item.value == {"food": "pizza"}
