"""How `SageMemStore` maps LangGraph (namespace, key) pairs onto sagemem keys (no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langgraph.store.base import GetOp

from sagemem.errors import ConfigurationError, InvalidKeyError
from sagemem.integrations.langgraph import (
    SageMemStore,
    decode_item_key,
    encode_item_key,
    namespace_key_prefix,
)
from sagemem.values import check_key

LABEL = st.text(min_size=1, max_size=12).filter(lambda s: "." not in s and "\x00" not in s)
NAMESPACE = st.lists(LABEL, min_size=1, max_size=4).map(tuple)
KEY = st.text(max_size=12)


@given(NAMESPACE, KEY)
def test_every_pair_encodes_to_a_valid_sagemem_key_that_decodes_back(
    namespace: tuple[str, ...], key: str
) -> None:
    """Any labels and key, control characters and astral planes included, round-trip."""
    stored = encode_item_key(namespace, key)
    assert check_key(stored) == stored
    assert decode_item_key(stored) == (namespace, key)


@given(NAMESPACE, KEY, NAMESPACE, KEY)
def test_distinct_pairs_never_share_a_key(
    namespace_a: tuple[str, ...], key_a: str, namespace_b: tuple[str, ...], key_b: str
) -> None:
    """The encoding is injective: two different (namespace, key) pairs get two keys."""
    same_pair = (namespace_a, key_a) == (namespace_b, key_b)
    assert same_pair == (encode_item_key(namespace_a, key_a) == encode_item_key(namespace_b, key_b))


@given(NAMESPACE, KEY, st.lists(LABEL, max_size=4).map(tuple))
def test_a_namespace_prefix_is_a_key_prefix_exactly_when_the_labels_match(
    namespace: tuple[str, ...], key: str, prefix: tuple[str, ...]
) -> None:
    """Prefix search by key prefix selects exactly the items under the namespace prefix."""
    under = namespace[: len(prefix)] == prefix
    assert under == encode_item_key(namespace, key).startswith(namespace_key_prefix(prefix))


def test_keys_not_written_by_the_store_decode_to_none() -> None:
    """Other keys of the sagemem namespace (not JSON arrays of strings) are skipped."""
    for stored in ("fact:pi", "[", "[1, 2]", '["only"]', '["a", 3]'):
        assert decode_item_key(stored) is None


def test_a_pair_too_long_for_a_sagemem_key_is_refused_before_any_io() -> None:
    """An over-long namespace and key raise InvalidKeyError naming the limit; nothing connects."""
    store = SageMemStore()
    with pytest.raises(InvalidKeyError, match=r"at most 512"):
        store.put(("a" * 300,), "b" * 300, {"v": 1})
    with pytest.raises(InvalidKeyError, match=r"must be a str"):
        store.batch([GetOp(("a",), 1)])  # type: ignore[arg-type]  # the bad key is the point


def test_bad_store_settings_raise_configuration_errors_before_any_io() -> None:
    """A bad namespace, agent id or index size is refused by the constructor, naming it."""
    with pytest.raises(ConfigurationError, match=r"namespace 'a:b'"):
        SageMemStore(namespace="a:b")
    with pytest.raises(ConfigurationError, match=r"agent id 'a b'"):
        SageMemStore(agent_id="a b")
    with pytest.raises(ConfigurationError, match=r"index\['dims'\]"):
        SageMemStore(index={"dims": 0, "embed": lambda texts: [[1.0] for _ in texts]})
