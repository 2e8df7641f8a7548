"""Capability logic, the scoped view's precedence and surface, and the grants' pure parts (rules,
statements, CLI argument errors), on in-memory tiers: no server is needed."""

from __future__ import annotations

import pytest

from sagemem.errors import ConfigurationError, ScopeViolationError
from sagemem.grants import (
    main,
    postgres_role_name,
    postgres_statements,
    redis_acl_rules,
    redis_username,
)
from sagemem.hierarchy import MemoryHierarchy
from sagemem.scope import AgentCapability, CapabilityError, ScopedHierarchy
from tests.fake_tiers import RecordingTier

RESTRICTED = AgentCapability(tiers={0, 1}, l3_read=False, l3_write=False)
PUBLIC_API = {
    "agent_id",
    "aclose",
    "capability",
    "compare_and_swap",
    "connect",
    "delete",
    "exists",
    "get",
    "read",
    "set",
}


def make_world() -> tuple[MemoryHierarchy, dict[str, RecordingTier]]:
    """A three-tier hierarchy of recording tiers plus an L2-labelled space."""
    tiers = {
        "L1": RecordingTier("L1"),
        "L2": RecordingTier("L2"),
        "L3": RecordingTier("L3", versioned=True),
        "space": RecordingTier("L2"),
    }
    return MemoryHierarchy(tiers=[tiers["L1"], tiers["L2"], tiers["L3"]]), tiers


def scoped(
    capability: AgentCapability, hierarchy: MemoryHierarchy, tiers: dict[str, RecordingTier]
) -> ScopedHierarchy:
    return ScopedHierarchy(hierarchy, capability, agent_id="agent-x", l2_space=tiers["space"])


# -- AgentCapability -----------------------------------------------------------------------


def test_l3_flags_follow_tiers_when_not_given() -> None:
    """Without flags, L3 read and write are granted exactly when tier 2 is in `tiers`."""
    assert (AgentCapability(tiers={0, 1, 2}).l3_read, AgentCapability({0, 1, 2}).l3_write) == (
        True,
        True,
    )
    assert (AgentCapability(tiers={0, 1}).l3_read, AgentCapability({0, 1}).l3_write) == (
        False,
        False,
    )


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"tiers": "01"}, "set of tier indexes"),
        ({"tiers": {0, True}}, "True"),
        ({"tiers": {-1}}, "-1"),
        ({"tiers": {0, 1}, "l3_read": True}, "l3_read=True"),
        ({"tiers": {0, 1, 2}, "l3_read": False, "l3_write": True}, "l3_write=True needs"),
        ({"tiers": {0, 1, 2}, "l3_read": "yes"}, "'yes'"),
        ({"tiers": {2}, "read_prefixes": {2: "team:"}}, "wrap a single prefix"),
        ({"tiers": {2}, "read_prefixes": {1: ("team:",)}}, "not in tiers"),
        ({"tiers": {2}, "write_prefixes": {2: ()}}, "is empty"),
        ({"tiers": {2}, "write_prefixes": {2: ("a\n",)}}, "not a key prefix"),
        ({"tiers": {2}, "write_prefixes": [("a",)]}, "mapping"),
    ],
)
def test_malformed_capability_raises_capability_error(
    arguments: dict[str, object], fragment: str
) -> None:
    """Each malformed argument raises a `CapabilityError` (a `ConfigurationError`) naming it."""
    with pytest.raises(CapabilityError) as raised:
        AgentCapability(**arguments)  # type: ignore[arg-type]  # deliberately malformed
    assert isinstance(raised.value, ConfigurationError)
    assert fragment in str(raised.value)


def test_prefixes_limit_reads_and_writes_per_tier() -> None:
    """Read `team:` at L3 but write only `agent:a:`; tiers without prefixes allow every key."""
    capability = AgentCapability(
        tiers={0, 2},
        read_prefixes={2: ("team:", "agent:a:")},
        write_prefixes={2: ("agent:a:",)},
    )
    assert capability.may_read(2, "team:x")
    assert not capability.may_write(2, "team:x")
    assert capability.may_write(2, "agent:a:x")
    assert not capability.may_read(2, "secret")
    assert capability.may_read(0, "secret")
    assert capability.may_write(0, "secret")
    assert not capability.may_read(1, "team:x")
    assert not capability.may_read(3, "team:x")


def test_capability_is_immutable_and_hashable() -> None:
    """Capabilities compare by value, hash alike, and refuse attribute assignment."""
    first = AgentCapability(tiers=[1, 0], read_prefixes={1: ["b", "a", "a"]})
    second = AgentCapability(tiers={0, 1}, read_prefixes={1: ("a", "b")})
    assert first == second
    assert hash(first) == hash(second)
    assert first.read_prefixes[1] == ("a", "b")
    with pytest.raises(AttributeError):
        first.l3_read = True  # refused at run time by __setattr__
    with pytest.raises(TypeError):
        first.read_prefixes[1] = ("c",)  # type: ignore[index]  # a read-only mapping


def test_describe_tier_names_the_grant() -> None:
    """The description used in errors states the tier, its name and the allowed prefixes."""
    capability = AgentCapability(tiers={0, 2}, l3_write=False, read_prefixes={2: ("team:",)})
    assert capability.describe_tier(1) == "tier 1 (L2): no access"
    assert capability.describe_tier(2) == (
        "tier 2 (L3): read keys starting with ['team:'], no write"
    )


# -- ScopedHierarchy -----------------------------------------------------------------------


async def test_seed_example_on_in_memory_tiers() -> None:
    """The seed's example: L3 data (even promoted to L1 and L2) is invisible; L3 writes raise."""
    hierarchy, tiers = make_world()
    await hierarchy.set("l3_key", "fact", tier_index=2)
    assert await hierarchy.get("l3_key") == "fact"
    view = scoped(RESTRICTED, hierarchy, tiers)
    assert await view.get("l3_key") is None
    assert await view.exists("l3_key") is False
    with pytest.raises(ScopeViolationError) as raised:
        await view.set("k", "v", tier_index=2)
    assert isinstance(raised.value, PermissionError)
    message = str(raised.value)
    for fragment in ("'agent-x'", "tier 2 (L3)", "tier 2 (L3): no access", "nothing was changed"):
        assert fragment in message
    assert "k" not in tiers["L3"].entries


async def test_precedence_is_own_l1_then_l3_then_l2_space() -> None:
    """A key at several tiers: L3 outranks the L2 space for L3 readers; L2-only agents see the
    L2 space; an agent's own tier-0 write comes first for that agent only."""
    hierarchy, tiers = make_world()
    await hierarchy.set("k", "global", tier_index=2)
    restricted = scoped(RESTRICTED, hierarchy, tiers)
    await restricted.set("k", "scratch", tier_index=1)
    reader = scoped(AgentCapability.unrestricted(3), hierarchy, tiers)
    assert await reader.get("k") == "global"
    assert await restricted.get("k") == "scratch"
    await restricted.set("k", "mine", tier_index=0)
    assert await restricted.get("k") == "mine"
    assert await reader.get("k") == "global"
    assert "k" not in tiers["L2"].entries or tiers["L2"].entries["k"][0] == '"global"'


async def test_only_l3_writers_fill_the_shared_l2_copy() -> None:
    """A read-only L3 agent reads L3 without writing the shared (L3-labelled) L2 copy."""
    hierarchy, tiers = make_world()
    await tiers["L3"].write("fact", 1)
    reader = scoped(AgentCapability(tiers={1, 2}, l3_write=False), hierarchy, tiers)
    assert await reader.get("fact") == 1
    assert "fact" not in tiers["L2"].entries
    writer = scoped(AgentCapability(tiers={1, 2}), hierarchy, tiers)
    assert await writer.get("fact") == 1
    assert "fact" in tiers["L2"].entries


async def test_delete_leaves_invisible_values_alone_and_refuses_visible_ones() -> None:
    """Deleting a key also held at a tier the agent cannot see neither touches nor mentions it;
    a value the agent sees but may not delete raises and nothing changes."""
    hierarchy, tiers = make_world()
    await hierarchy.set("k", "global", tier_index=2)
    restricted = scoped(RESTRICTED, hierarchy, tiers)
    await restricted.set("k", "scratch", tier_index=1)
    assert await restricted.delete("k") is True
    assert tiers["L3"].entries["k"][0] == '"global"'
    reader = scoped(AgentCapability(tiers={0, 1, 2}, l3_write=False), hierarchy, tiers)
    with pytest.raises(ScopeViolationError, match="tier 2"):
        await reader.delete("k")
    assert tiers["L3"].entries["k"][0] == '"global"'
    nothing = scoped(AgentCapability(tiers=set()), hierarchy, tiers)
    with pytest.raises(ScopeViolationError, match="at any tier"):
        await nothing.delete("k")


async def test_out_of_range_tier_index_is_a_configuration_error() -> None:
    """A tier index the hierarchy does not have is a `ConfigurationError`, not a violation."""
    hierarchy, tiers = make_world()
    view = scoped(AgentCapability.unrestricted(3), hierarchy, tiers)
    with pytest.raises(ConfigurationError, match="out of range"):
        await view.set("k", 1, tier_index=5)


async def test_tier_past_l3_is_read_and_written_only_with_its_grant() -> None:
    """The semantic tier (index 3) is consulted only by agents granted tier 3, and a write there
    leaves L3 alone."""
    l1, l2, l3, dram = (
        RecordingTier("L1"),
        RecordingTier("L2"),
        RecordingTier("L3", versioned=True),
        RecordingTier("DRAM"),
    )
    hierarchy = MemoryHierarchy(tiers=[l1, l2, l3, dram])
    space = RecordingTier("L2")
    await l3.write("k", "global")
    semantic = ScopedHierarchy(hierarchy, AgentCapability(tiers={3}), agent_id="s", l2_space=space)
    await semantic.set("memo", "embedding-backed", tier_index=3)
    assert await semantic.get("memo") == "embedding-backed"
    assert await semantic.get("k") is None
    await semantic.set("k", "semantic", tier_index=3)
    assert l3.entries["k"][0] == '"global"'
    l2_only = ScopedHierarchy(hierarchy, RESTRICTED, agent_id="r", l2_space=space)
    assert await l2_only.get("memo") is None


async def test_scoped_view_exposes_nothing_unscoped() -> None:
    """Bypass: the public surface is the documented methods plus agent_id and capability; there
    is no instance dict, no `__getattr__` passthrough, and no attribute can be added."""
    hierarchy, tiers = make_world()
    view = scoped(RESTRICTED, hierarchy, tiers)
    assert {name for name in dir(view) if not name.startswith("_")} == PUBLIC_API
    with pytest.raises(TypeError):
        vars(view)
    assert "__getattr__" not in vars(ScopedHierarchy)
    assert not hasattr(view, "__dict__")
    with pytest.raises(AttributeError):
        view.hierarchy = hierarchy  # type: ignore[attr-defined]  # the point: no such slot
    for name in PUBLIC_API:
        attribute = getattr(view, name)
        if not callable(attribute):
            assert isinstance(attribute, str | AgentCapability)
    assert "hierarchy" not in repr(view).lower().replace("scopedhierarchy", "")
    # What Python cannot prevent: name-mangled slots are reachable by a determined caller.
    private = [name for name in dir(view) if name.startswith("_ScopedHierarchy__")]
    assert "_ScopedHierarchy__hierarchy" in private


async def test_scoped_view_refuses_use_after_close() -> None:
    """After `aclose()` every operation raises `ClosedResourceError`."""
    from sagemem.errors import ClosedResourceError

    hierarchy, tiers = make_world()
    view = scoped(RESTRICTED, hierarchy, tiers)
    await view.aclose()
    await view.aclose()
    with pytest.raises(ClosedResourceError):
        await view.get("k")


# -- grants: the pure parts ----------------------------------------------------------------


def test_restricted_redis_rules_name_only_the_l2_space_and_own_channel() -> None:
    """An L1+L2 agent's ACL starts from nothing and names only its L2 space and its channel."""
    rules = redis_acl_rules(RESTRICTED, agent_id="a", namespace="ns")
    assert rules[:4] == ["reset", "resetkeys", "resetchannels", "-@all"]
    patterns = [rule for rule in rules if "~" in rule or rule.startswith("&")]
    assert patterns == ["%R~sagemem:{ns.l2}:*", "%W~sagemem:{ns.l2}:*", "&sagemem-bus:{ns}:a|*"]
    assert not any(rule in ("+publish", "+keys", "+scan", "allkeys", "+@all") for rule in rules)
    assert "+psubscribe" in rules
    assert "+ssubscribe" in rules
    assert "+subscribe" not in rules


def test_prefix_glob_characters_are_escaped() -> None:
    """A prefix containing glob characters matches only itself in the Redis key pattern."""
    capability = AgentCapability(tiers={1}, read_prefixes={1: ("a*[b]?",)})
    rules = redis_acl_rules(capability, agent_id="a", namespace="ns")
    assert "%R~sagemem:{ns.l2}:a\\*\\[b\\]\\?*" in rules


def test_l3_writer_gets_a_publish_only_selector() -> None:
    """PUBLISH lives in a selector, apart from PSUBSCRIBE: invalidations and updates only of
    the write prefixes, recalls of the read prefixes, each prefix encoded as channel names
    encode keys and glob-escaped, so that `*|i|P*` matches exactly the keys starting with P."""
    capability = AgentCapability(
        tiers={0, 1, 2},
        read_prefixes={2: ("team:", "agent:a:")},
        write_prefixes={2: ("agent:a:", "x|*%")},
    )
    rules = redis_acl_rules(capability, agent_id="a", namespace="ns")
    selectors = [rule for rule in rules if rule.startswith("(")]
    assert selectors == [
        "(+publish +spublish +evalsha +eval +incr +pexpire &sagemem-bus:{ns}:*|i|agent:a:* "
        "&sagemem-bus:{ns}:*|i|x%7C\\*%25* &sagemem-bus:{ns}:*|u|agent:a:* "
        "&sagemem-bus:{ns}:*|u|x%7C\\*%25* &sagemem-bus:{ns}:*|r|agent:a:* "
        "&sagemem-bus:{ns}:*|r|team:* ~sagemem-bus:{ns}:*:seq)"
    ]
    assert "%W~sagemem:{ns}:agent:a:*" in rules
    assert not any(rule.startswith("&sagemem-bus:{ns}:*") for rule in rules)


def test_postgres_statements_follow_the_grant() -> None:
    """No L3 read: USAGE only; read/write: SELECT + INSERT/UPDATE with RLS policies on the
    namespace and prefixes (quotes escaped); never DELETE."""
    none = postgres_statements(RESTRICTED, role="r", namespace="ns", schema="s", password="p")
    assert not any("l3_entries" in statement for statement in none)
    capability = AgentCapability(
        tiers={2}, read_prefixes={2: ("team:",)}, write_prefixes={2: ("it's:",)}
    )
    statements = postgres_statements(capability, role="r", namespace="ns", schema="s", password="p")
    text = "\n".join(statements)
    assert 'GRANT INSERT, UPDATE ON "s".l3_entries' in text
    assert "DELETE" not in text
    assert "starts_with(key, 'it''s:')" in text
    assert "namespace = 'ns' AND (starts_with(key, 'it''s:') OR starts_with(key, 'team:'))" in text


def test_the_semantic_tier_gets_its_own_policies_when_granted() -> None:
    """Tier 3 (DRAM) granted: SELECT on its read prefixes and INSERT/UPDATE on its write
    prefixes of `dram_entries`, with policies named apart from L3's; not granted: nothing."""
    capability = AgentCapability(
        tiers={0, 3}, read_prefixes={3: ("team:",)}, write_prefixes={3: ("agent:a:",)}
    )
    text = "\n".join(
        postgres_statements(capability, role="r", namespace="ns", schema="s", password="p")
    )
    assert "l3_entries" not in text
    assert 'GRANT SELECT ON "s".dram_entries TO "r"' in text
    assert 'GRANT INSERT, UPDATE ON "s".dram_entries TO "r"' in text
    assert (
        'CREATE POLICY "r_dram_select" ON "s".dram_entries FOR SELECT TO "r" USING (namespace '
        "= 'ns' AND (starts_with(key, 'agent:a:') OR starts_with(key, 'team:')))"
    ) in text
    assert "WITH CHECK (namespace = 'ns' AND (starts_with(key, 'agent:a:')))" in text
    assert "DELETE" not in text
    without = postgres_statements(
        AgentCapability(tiers={0, 1, 2}), role="r", namespace="ns", schema="s", password="p"
    )
    assert not any("dram_entries" in statement for statement in without)


def test_names_are_bounded_and_distinct() -> None:
    """Role names fit Postgres's 63 bytes and differ per schema, namespace and agent."""
    names = {
        postgres_role_name(agent_id=agent, namespace=ns, schema=schema)
        for agent in ("a", "b" * 128)
        for ns in ("n", "m" * 64)
        for schema in ("s", "t")
    }
    assert len(names) == 8
    assert max(len(name) for name in names) <= 63
    assert redis_username(agent_id="a", namespace="ns") == "sagemem-grant:ns:a"


@pytest.mark.parametrize(
    ("admin", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://u%3Ans%3Aa:p%2Fw@127.0.0.1:6379/0"),
        ("redis://old:secret@h:1/2", "redis://u%3Ans%3Aa:p%2Fw@h:1/2"),
        (
            "postgresql://postgres:@/postgres?host=/tmp/pg&port=5433",
            "postgresql://u%3Ans%3Aa:p%2Fw@/postgres?host=/tmp/pg&port=5433",
        ),
    ],
)
def test_restricted_urls_replace_only_the_credentials(admin: str, expected: str) -> None:
    """The restricted URL keeps host, port, path and query and carries the quoted user."""
    from sagemem.grants import _with_credentials

    assert _with_credentials(admin, "u:ns:a", "p/w") == expected


def test_credentials_repr_hides_the_passwords() -> None:
    """`repr(GrantCredentials)` names the user and role but never a URL with a password."""
    from sagemem.grants import GrantCredentials

    credentials = GrantCredentials(
        agent_id="a",
        namespace="ns",
        schema="s",
        redis_username="u",
        postgres_role="r",
        redis_url="redis://u:topsecret@h/0",
        postgres_dsn="postgresql://r:topsecret@h/db",
    )
    assert "topsecret" not in repr(credentials)
    assert credentials.l2_namespace == "ns.l2"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["create"],
        ["create", "--agent", "a", "--namespace", "n", "--tiers", "x"],
        ["create", "--agent", "a", "--namespace", "n", "--tiers", "0,1", "--l3-write"],
        ["create", "--agent", "a b", "--namespace", "n", "--tiers", "0", "--read-prefix", "0"],
        ["revoke", "--agent", "a"],
    ],
)
def test_grants_cli_input_errors_exit_with_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad arguments or a contradictory grant exit with status 2 and say why, before any I/O."""
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() != ""
