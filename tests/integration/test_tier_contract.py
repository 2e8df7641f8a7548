"""The contract every tier keeps, written once and run on L1, L2, L3 and the semantic tier
(real Redis and Postgres for the last three): the Tier protocol, exact round trips, stored None
versus a miss, copies in and out, delete, fill with the promoted version, and bad input that
raises a typed error and changes nothing. What only one tier does stays in its own module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sagemem.errors import InvalidKeyError, InvalidValueError
from sagemem.tiers.base import Tier, TierEntry
from sagemem.tiers.dram import DRAMTier
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue
from tests.json_samples import TRICKY_VALUES, assert_same_json

TIERS = ("L1", "L2", "L3", "DRAM")
type AnyTier = L1Tier | L2Tier | L3Tier | DRAMTier  # the Tier protocol plus get/set
# Postgres JSONB has no negative zero (-0.0 reads back 0.0, equal but with another repr).
_JSONB_TIERS = frozenset({"L3", "DRAM"})


@pytest.fixture(params=TIERS)
async def tier(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[AnyTier]:
    """A connected tier of each kind on a fresh namespace (and schema), closed after the test."""
    made: AnyTier
    if request.param == "L1":
        made = L1Tier()
    elif request.param == "L2":
        made = L2Tier(request.getfixturevalue("redis_url"), namespace=namespace)
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        schema = request.getfixturevalue("pg_schema")
        kind = L3Tier if request.param == "L3" else DRAMTier
        made = kind(dsn, namespace=namespace, schema=schema)
    async with made:
        yield made
        await made.clear()


async def test_each_tier_implements_the_tier_protocol_under_its_name(
    tier: AnyTier, request: pytest.FixtureRequest
) -> None:
    """Each tier is a `Tier` (statically and at run time) and carries its name."""
    as_tier: Tier = tier  # mypy checks the protocol statically here
    assert isinstance(as_tier, Tier)
    assert tier.name == request.node.callspec.params["tier"]


@pytest.mark.parametrize("value", TRICKY_VALUES, ids=repr)
async def test_tricky_values_read_back_equal_with_the_same_types(
    tier: AnyTier, value: JSONValue
) -> None:
    """Every JSON value reads back equal with the same types (and the same repr, but for
    JSONB's -0.0), at the version the write returned."""
    version = await tier.set("tricky", value)
    entry = await tier.read("tricky")
    assert entry is not None
    assert_same_json(value, entry.value)
    assert entry.version == version
    if tier.name not in _JSONB_TIERS:
        assert repr(value) == repr(entry.value)


async def test_a_stored_none_is_an_entry_and_a_missing_key_is_a_miss(tier: AnyTier) -> None:
    """read() returns an entry holding None for a stored None, and None for a key never
    written; get() falls back to the default only for the miss."""
    version = await tier.set("none", None)
    assert TierEntry(None, version) == await tier.read("none")
    assert await tier.read("missing") is None
    assert await tier.get("missing", default="fallback") == "fallback"
    assert await tier.get("none", default="fallback") is None
    assert await tier.exists("none")
    assert not await tier.exists("missing")


async def test_mutating_passed_or_returned_objects_never_changes_what_is_stored(
    tier: AnyTier,
) -> None:
    """Values are copied in and out: mutations of either side leave the stored value intact."""
    items: list[JSONValue] = [1, 2]
    original: dict[str, JSONValue] = {"items": items, "meta": {"n": 1}}
    await tier.set("copy", original)
    items.append(3)
    returned = await tier.get("copy")
    assert returned == {"items": [1, 2], "meta": {"n": 1}}
    assert isinstance(returned, dict)
    meta = returned["meta"]
    assert isinstance(meta, dict)
    meta["n"] = 99
    assert await tier.get("copy") == {"items": [1, 2], "meta": {"n": 1}}


async def test_delete_reports_whether_the_key_was_there_and_leaves_a_miss(tier: AnyTier) -> None:
    """delete() answers True once and False after; the key then reads as a miss."""
    await tier.set("d", 1)
    assert await tier.delete("d")
    assert not await tier.delete("d")
    assert await tier.read("d") is None
    assert not await tier.exists("d")


async def test_fill_of_an_absent_key_keeps_the_version_of_the_promoted_copy(tier: AnyTier) -> None:
    """A promotion into a tier that lacks the key installs the value at the copy's version."""
    await tier.fill("promoted", TierEntry({"promoted": True}, 7))
    assert TierEntry({"promoted": True}, 7) == await tier.read("promoted")


async def test_bad_keys_and_values_raise_typed_errors_and_change_nothing(tier: AnyTier) -> None:
    """A value JSON cannot hold, an empty key and a key that is no str raise typed errors
    (subclasses of ValueError) and leave the stored value as it was."""
    version = await tier.set("k", 1)
    with pytest.raises(InvalidValueError):
        await tier.set("k", (1, 2))  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(InvalidValueError):
        await tier.set("k", float("nan"))
    with pytest.raises(InvalidKeyError):
        await tier.set("", 2)
    with pytest.raises(InvalidKeyError):
        await tier.get(5)  # type: ignore[arg-type]  # the point of the test
    assert issubclass(InvalidKeyError, ValueError)
    assert issubclass(InvalidValueError, ValueError)
    assert TierEntry(1, version) == await tier.read("k")
