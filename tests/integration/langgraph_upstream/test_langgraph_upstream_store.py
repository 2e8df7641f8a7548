"""The tests of `tests/test_store.py` from the pinned langgraph-checkpoint sdist, collected here
with `InMemoryStore` meaning `SageMemStore` (see conftest.py); nothing in them is changed."""

from __future__ import annotations

import langgraph.store.memory as langgraph_memory

from sagemem.integrations.langgraph import SageMemStore
from tests.integration.langgraph_upstream.conftest import upstream_store_tests

_upstream = upstream_store_tests()
# Every public name of the upstream module (its tests, its fixtures, the names they use).
globals().update({name: value for name, value in vars(_upstream).items() if name[0] != "_"})


async def test_upstream_tests_see_sagemem_store_and_the_rest_see_langgraphs() -> None:
    """The substitution binds `InMemoryStore` to `SageMemStore` in the upstream module only."""
    assert _upstream.InMemoryStore is SageMemStore
    assert isinstance(_upstream.MockAsyncBatchedStore()._store, SageMemStore)
    assert not issubclass(langgraph_memory.InMemoryStore, SageMemStore)
    assert sum(1 for name in vars(_upstream) if name.startswith("test_")) == 34
