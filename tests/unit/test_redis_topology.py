"""The cluster hash slot of a key, computed without a server (the integration tests compare it
with the server's `CLUSTER KEYSLOT`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagemem.errors import ConfigurationError
from sagemem.redis_topology import HASH_SLOT_COUNT, key_hash_slot


def test_the_crc16_check_value_of_the_cluster_spec_gives_its_slot() -> None:
    """The cluster spec's CRC16 check value: "123456789" hashes to 0x31C3, slot 12739."""
    assert key_hash_slot("123456789") == 0x31C3 == 12739


@pytest.mark.parametrize(
    ("key", "hashed"),
    [
        ("{user1000}.following", "user1000"),
        ("{user1000}.followers", "user1000"),
        ("foo{{bar}}zap", "{bar"),
        ("foo{bar}{zap}", "bar"),
        ("foo{}{bar}", "foo{}{bar}"),
        ("{}", "{}"),
        ("foo{bar", "foo{bar"),
        ("foo}bar{", "foo}bar{"),
        ("{ns:key}:lease", "ns:key"),
    ],
)
def test_only_a_non_empty_hash_tag_is_hashed(key: str, hashed: str) -> None:
    """The first `{...}` with something inside decides the slot; an empty or unclosed one
    leaves the whole key hashed (the examples of the cluster spec)."""
    assert key_hash_slot(key) == key_hash_slot(hashed)


def test_keys_of_one_tag_share_a_slot_and_different_keys_spread() -> None:
    """Keys with the same tag land in one slot; 1000 untagged keys use many slots."""
    assert len({key_hash_slot(f"{{ns:k}}:{suffix}") for suffix in range(100)}) == 1
    assert len({key_hash_slot(f"ns:k{index}") for index in range(1000)}) > 900


@given(st.binary(max_size=64))
def test_every_key_maps_into_the_slot_range_and_str_is_its_utf8(key: bytes) -> None:
    """Any key's slot is in 0-16383; a str key hashes like its UTF-8 bytes."""
    slot = key_hash_slot(key)
    assert 0 <= slot < HASH_SLOT_COUNT
    text = key.decode(errors="replace")
    assert key_hash_slot(text) == key_hash_slot(text.encode())


def test_a_key_that_is_not_text_is_refused() -> None:
    """An int key raises ConfigurationError (a ValueError) naming the value."""
    with pytest.raises(ConfigurationError, match="key 42 is a int"):
        key_hash_slot(42)  # type: ignore[arg-type]  # the wrong type is the point
