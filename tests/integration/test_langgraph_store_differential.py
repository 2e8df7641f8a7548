"""Differential test: random operation sequences give the same results on `SageMemStore` (real
servers) and on LangGraph's `InMemoryStore`.

Compared exactly: every get, every namespace listing (with prefix, suffix, max_depth, limit,
offset), the set of items every search returns, and the number of items on each page. Not
compared: the order of search results (InMemoryStore returns insertion order, SageMemStore key
order; BaseStore promises neither) and timestamps. One known difference is bridged: the
reference keeps a namespace in its listings after its last item is deleted, or after a mere
get in it (its `_data` is a defaultdict); the namespaces it lists with no item are dropped from
its side before comparing, as LangGraph's Postgres store lists only namespaces holding items.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.store.base import GetOp, Op, PutOp, SearchOp
from langgraph.store.memory import InMemoryStore

from sagemem.integrations.langgraph import SageMemStore
from sagemem.services import ServiceEndpoints

LABELS = st.sampled_from(["a", "b", "c", 'q"', "x,y", "[z]", "é ü", "b\\"])
KEYS = st.sampled_from(["k", "k2", 'k"', "k]", "ключ"])
VALUES = st.fixed_dictionaries(
    {"n": st.integers(0, 3)},
    optional={
        "s": st.sampled_from(["red", "blue"]),
        "c": st.fixed_dictionaries({"d": st.booleans()}),
    },
)
FILTERS = st.one_of(
    st.none(),
    st.builds(lambda n: {"n": n}, st.integers(0, 3)),
    st.builds(
        lambda op, n: {"n": {op: n}},
        st.sampled_from(["$gt", "$gte", "$lt", "$lte", "$ne"]),
        st.integers(0, 3),
    ),
    st.builds(lambda s: {"s": s}, st.sampled_from(["red", "blue"])),
    st.builds(lambda d: {"c": {"d": d}}, st.booleans()),
)
NAMESPACES = st.lists(LABELS, min_size=1, max_size=3).map(tuple)
PREFIXES = st.lists(st.one_of(LABELS, st.just("*")), max_size=2).map(tuple)


@dataclass(frozen=True)
class Step:
    kind: str
    args: tuple[Any, ...]


STEPS = st.one_of(
    st.builds(lambda ns, k, v: Step("put", (ns, k, v)), NAMESPACES, KEYS, VALUES),
    st.builds(lambda ns, k: Step("delete", (ns, k)), NAMESPACES, KEYS),
    st.builds(lambda ns, k: Step("get", (ns, k)), NAMESPACES, KEYS),
    st.builds(
        lambda p, f, lim, off: Step("search", (p, f, lim, off)),
        st.lists(LABELS, max_size=2).map(tuple),
        FILTERS,
        st.integers(1, 6),
        st.integers(0, 4),
    ),
    st.builds(
        lambda p, s, d, lim, off: Step("list", (p, s, d, lim, off)),
        PREFIXES,
        PREFIXES,
        st.one_of(st.none(), st.integers(1, 3)),
        st.integers(1, 6),
        st.integers(0, 3),
    ),
    st.builds(
        lambda ops: Step("batch", (ops,)),
        st.lists(
            st.one_of(
                st.builds(lambda ns, k, v: ("put", ns, k, v), NAMESPACES, KEYS, VALUES),
                st.builds(lambda ns, k: ("delete", ns, k), NAMESPACES, KEYS),
                st.builds(lambda ns, k: ("get", ns, k), NAMESPACES, KEYS),
                st.builds(lambda p: ("search", p), st.lists(LABELS, max_size=1).map(tuple)),
            ),
            min_size=2,
            max_size=4,
        ),
    ),
)


def _rooted(root: str, namespace: tuple[str, ...]) -> tuple[str, ...]:
    return (root, *namespace)


def _items(results: Any) -> set[tuple[tuple[str, ...], str, str]]:
    return {(item.namespace, item.key, repr(sorted(item.value.items()))) for item in results}


def _prune_empty_namespaces(reference: InMemoryStore) -> None:
    for namespace in [ns for ns, items in reference._data.items() if not items]:
        del reference._data[namespace]


def _ops(root: str, batch: list[tuple[Any, ...]]) -> list[Op]:
    ops: list[Op] = []
    for entry in batch:
        if entry[0] == "put":
            ops.append(PutOp(_rooted(root, entry[1]), entry[2], entry[3]))
        elif entry[0] == "delete":
            ops.append(PutOp(_rooted(root, entry[1]), entry[2], None))
        elif entry[0] == "get":
            ops.append(GetOp(_rooted(root, entry[1]), entry[2]))
        else:
            ops.append(SearchOp(_rooted(root, entry[1]), limit=100))
    return ops


def _compare(root: str, step: Step, store: SageMemStore, reference: InMemoryStore) -> None:
    if step.kind == "put":
        ns, key, value = step.args
        store.put(_rooted(root, ns), key, value)
        reference.put(_rooted(root, ns), key, value)
    elif step.kind == "delete":
        ns, key = step.args
        store.delete(_rooted(root, ns), key)
        reference.delete(_rooted(root, ns), key)
    elif step.kind == "get":
        ns, key = step.args
        mine, theirs = store.get(_rooted(root, ns), key), reference.get(_rooted(root, ns), key)
        assert (mine and mine.value) == (theirs and theirs.value), step
    elif step.kind == "search":
        prefix, filter_, limit, offset = step.args
        namespace = _rooted(root, prefix)
        everything = store.search(namespace, filter=filter_, limit=100)
        assert _items(everything) == _items(
            reference.search(namespace, filter=filter_, limit=100)
        ), step
        page = store.search(namespace, filter=filter_, limit=limit, offset=offset)
        assert [(i.namespace, i.key) for i in page] == [
            (i.namespace, i.key) for i in everything[offset : offset + limit]
        ], step
    elif step.kind == "list":
        prefix, suffix, depth, limit, offset = step.args
        _prune_empty_namespaces(reference)
        kwargs = {"suffix": suffix or None, "max_depth": depth, "limit": limit, "offset": offset}
        mine_ns = store.list_namespaces(prefix=_rooted(root, prefix), **kwargs)
        theirs_ns = reference.list_namespaces(prefix=_rooted(root, prefix), **kwargs)
        assert mine_ns == theirs_ns, step
    else:
        (batch,) = step.args
        mine_results = store.batch(_ops(root, batch))
        theirs_results = reference.batch(_ops(root, batch))
        for mine_result, their_result in zip(mine_results, theirs_results, strict=True):
            if isinstance(mine_result, list):
                assert isinstance(their_result, list)
                assert _items(mine_result) == _items(their_result), step
            else:
                mine_value = None if mine_result is None else getattr(mine_result, "value", None)
                their_value = None if their_result is None else getattr(their_result, "value", None)
                assert mine_value == their_value, step


def test_random_operation_sequences_agree_with_langgraphs_in_memory_store(
    service_endpoints: ServiceEndpoints, namespace: str
) -> None:
    """Puts, deletes, gets, filtered and paged searches, listings and batches agree."""
    roots = (f"ex{n}" for n in itertools.count())
    with SageMemStore(namespace=namespace) as store:

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        )
        @given(st.lists(STEPS, min_size=1, max_size=12))
        def run(steps: list[Step]) -> None:
            root = next(roots)  # every example works under a namespace of its own
            reference = InMemoryStore()
            for step in steps:
                _compare(root, step, store, reference)
            final_mine = _items(store.search((root,), limit=1000))
            assert final_mine == _items(reference.search((root,), limit=1000))

        run()
