"""Capabilities on the real servers: the seed's scoping example, the leaks a naive scope has
(promotion, shadowing, bypass through raw clients, the bus), and the grants that make Redis and
Postgres enforce the same boundary. Every Redis user and Postgres role a test creates is
revoked in the fixture's teardown, also when the test fails."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio.client import PubSub
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from sagemem.coherence.bus import BusUnavailable, CoherenceBus
from sagemem.coherence.directory import RELAY_L2_DELETE, RELAY_PUBLISH_UPDATES, RedisDirectory
from sagemem.coherence.messages import InvalidateMessage, UpdateMessage, channel_name, encode
from sagemem.errors import ScopeViolationError, VersionConflict
from sagemem.grants import (
    GrantCredentials,
    create_grant,
    list_grants,
    main,
    postgres_role_name,
    redis_acl_rules,
    redis_username,
    revoke_grant,
)
from sagemem.hierarchy import MemoryHierarchy
from sagemem.redis_topology import namespace_node_url
from sagemem.scope import AgentCapability, ScopedHierarchy
from sagemem.spec.vocabulary import L1State, MessageKind
from sagemem.tiers.dram import DRAMTier
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from tests.integration.polling import wait_until

type Provision = Callable[[AgentCapability, str], Awaitable[GrantCredentials]]

RESTRICTED = AgentCapability(tiers={0, 1}, l3_read=False, l3_write=False)
TEAM_READER = AgentCapability(
    tiers={0, 1, 2},
    l3_read=True,
    l3_write=True,
    read_prefixes={1: ("team:", "agent:a:"), 2: ("team:", "agent:a:")},
    write_prefixes={1: ("agent:a:",), 2: ("agent:a:",)},
)


async def _leftover_grants(redis_url: str, postgres_dsn: str, namespace: str) -> list[str]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        users = [u.decode() if isinstance(u, bytes) else u for u in await client.acl_users()]
    finally:
        await client.aclose()
    connection = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        comments = await connection.fetch(
            "SELECT rolname FROM pg_roles WHERE shobj_description(oid, 'pg_authid') LIKE $1",
            f'%"namespace": "{namespace}"%',
        )
    finally:
        await connection.close(timeout=10)
    return [u for u in users if f":{namespace}:" in u] + [str(r[0]) for r in comments]


async def _subscribe(
    pubsub: PubSub, channel: str, *, pattern: bool = False, sharded: bool = False
) -> str:
    """Subscribe and wait for the server's answer: the confirmation's type, or its error."""
    if sharded:
        await pubsub.ssubscribe(channel)
    else:
        await (pubsub.psubscribe(channel) if pattern else pubsub.subscribe(channel))
    async with asyncio.timeout(10):
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None:
                return str(message["type"])


@pytest.fixture
async def provision(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> AsyncIterator[Provision]:
    """Creates grants in the test's namespace and schema; revokes all of them afterwards."""
    agents: list[str] = []

    async def make(capability: AgentCapability, agent_id: str) -> GrantCredentials:
        agents.append(agent_id)
        return await create_grant(
            capability,
            agent_id=agent_id,
            namespace=namespace,
            redis_url=redis_url,
            postgres_dsn=postgres_dsn,
            schema=pg_schema,
        )

    try:
        yield make
    finally:
        for agent in agents:
            await revoke_grant(
                agent_id=agent,
                namespace=namespace,
                redis_url=redis_url,
                postgres_dsn=postgres_dsn,
                schema=pg_schema,
            )
        assert await _leftover_grants(redis_url, postgres_dsn, namespace) == []


@pytest.fixture
async def hierarchy(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> AsyncIterator[MemoryHierarchy]:
    """The seed's quickstart hierarchy (L1Tier, L2Tier, L3Tier) on the session's servers."""
    l1 = L1Tier(capacity=128)
    l2 = L2Tier(url=redis_url, namespace=namespace)
    l3 = L3Tier(dsn=postgres_dsn, namespace=namespace, schema=pg_schema)
    space = L2Tier(url=redis_url, namespace=namespace + ".l2")
    await l2.connect()
    await l3.connect()
    await space.connect()
    try:
        yield MemoryHierarchy(tiers=[l1, l2, l3])
    finally:
        await l2.clear()
        await space.clear()
        for tier in (l2, l3, space):
            await tier.aclose()


@pytest.fixture
async def admin_redis(redis_url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    """A privileged raw Redis client on the server that holds the namespace's keys, to look
    behind the tiers' backs."""
    client = aioredis.Redis.from_url(await namespace_node_url(redis_url, namespace))
    try:
        yield client
    finally:
        await client.aclose()


async def test_seed_scoping_example_works_as_written(hierarchy: MemoryHierarchy) -> None:
    """The seed's example: L3 data is invisible to an L1+L2 agent and a write at L3 raises."""
    await hierarchy.set("l3_key", "global fact", tier_index=2)
    assert await hierarchy.get("l3_key") == "global fact"  # promoted into L1 and L2
    # The seed's lines, as written:
    cap = AgentCapability(
        tiers={0, 1},  # L1 + L2 only
        l3_read=False,
        l3_write=False,
    )
    scoped = ScopedHierarchy(hierarchy, cap, agent_id="restricted-agent")
    assert await scoped.get("l3_key") is None
    with pytest.raises(ScopeViolationError) as raised:
        await scoped.set("k", "v", tier_index=2)
    message = str(raised.value)
    assert "restricted-agent" in message
    assert "tier 2 (L3)" in message
    assert await hierarchy.get("k") is None
    await scoped.aclose()


async def test_promoted_l3_value_stays_invisible_to_agent_without_l3_read(
    hierarchy: MemoryHierarchy,
    provision: Provision,
    admin_redis: aioredis.Redis,
    namespace: str,
) -> None:
    """Promotion leak: a naive scope that only skips tier 2 reads the shared L2 first and
    returns the L3 value a privileged agent promoted there; labels keep it invisible, in the API
    and at the server (the restricted Redis user cannot GET the L3-labelled key space)."""
    await hierarchy.set("fact:secret", "launch code", tier_index=2)
    privileged = ScopedHierarchy(hierarchy, AgentCapability.unrestricted(3), agent_id="boss")
    restricted = ScopedHierarchy(hierarchy, RESTRICTED, agent_id="intern")
    assert await privileged.get("fact:secret") == "launch code"
    promoted = await admin_redis.get(f"sagemem:{{{namespace}}}:fact:secret")
    assert isinstance(promoted, bytes)
    assert promoted.endswith(b'"launch code"')
    assert await restricted.get("fact:secret") is None
    assert await restricted.exists("fact:secret") is False
    credentials = await provision(RESTRICTED, "intern")
    raw = aioredis.Redis.from_url(await namespace_node_url(credentials.redis_url, namespace))
    try:
        with pytest.raises(NoPermissionError):
            await raw.get(f"sagemem:{{{namespace}}}:fact:secret")
    finally:
        await raw.aclose()
    for view in (privileged, restricted):
        await view.aclose()


async def test_restricted_l2_write_does_not_shadow_l3_for_other_agents(
    hierarchy: MemoryHierarchy,
    provision: Provision,
    admin_redis: aioredis.Redis,
    namespace: str,
) -> None:
    """Shadowing leak: a naive scope writes tier 1 into the shared L2 key that every reader
    consults before L3, so every agent would read the restricted agent's forged value; here it
    lands in the L2-labelled space, L3 keeps precedence for L3 readers, and the restricted Redis
    user cannot write the L3-labelled key either."""
    await hierarchy.set("belief:x", "truth", tier_index=2)
    reader = ScopedHierarchy(hierarchy, AgentCapability.unrestricted(3), agent_id="reader")
    assert await reader.get("belief:x") == "truth"  # now also cached in the shared L2
    before = await admin_redis.get(f"sagemem:{{{namespace}}}:belief:x")
    restricted = ScopedHierarchy(hierarchy, RESTRICTED, agent_id="intern")
    await restricted.set("belief:x", "forged", tier_index=1)
    fresh_reader = ScopedHierarchy(hierarchy, AgentCapability.unrestricted(3), agent_id="other")
    assert await fresh_reader.get("belief:x") == "truth"
    assert await hierarchy.get("belief:x") == "truth"
    assert await admin_redis.get(f"sagemem:{{{namespace}}}:belief:x") == before
    assert await restricted.get("belief:x") == "forged"  # its own L2 space
    credentials = await provision(RESTRICTED, "intern")
    raw = aioredis.Redis.from_url(await namespace_node_url(credentials.redis_url, namespace))
    try:
        with pytest.raises(NoPermissionError):
            await raw.set(f"sagemem:{{{namespace}}}:belief:x", b';"forged"')
    finally:
        await raw.aclose()
    assert await admin_redis.get(f"sagemem:{{{namespace}}}:belief:x") == before
    for view in (reader, restricted, fresh_reader):
        await view.aclose()


async def test_restricted_process_runs_on_its_credentials_alone(
    hierarchy: MemoryHierarchy, provision: Provision, namespace: str
) -> None:
    """An L1+L2 agent's own hierarchy built on its restricted Redis URL reads and writes its
    L2 space and never sees the L3 value the privileged hierarchy promoted."""
    await hierarchy.set("fact:pi", 3.14159, tier_index=2)
    assert await hierarchy.get("fact:pi") == 3.14159  # promoted into the shared L2
    credentials = await provision(RESTRICTED, "intern")
    own_l2 = L2Tier(url=credentials.redis_url, namespace=namespace)
    own = MemoryHierarchy(tiers=[L1Tier(capacity=16), own_l2])
    async with ScopedHierarchy(own, RESTRICTED, agent_id="intern") as scoped:
        assert await scoped.get("fact:pi") is None
        await scoped.set("note", {"draft": 1}, tier_index=1)
        assert await scoped.get("note") == {"draft": 1}
        assert await scoped.delete("note") is True
        assert await scoped.get("note") is None
    await own_l2.aclose()


async def test_redis_user_is_confined_to_its_grant(
    provision: Provision, namespace: str, redis_url: str
) -> None:
    """Bypass: a raw client with the agent's Redis credentials can read and write only its
    key prefixes of the L2 space, cannot list keys or administer the server, and can listen
    only on its own bus channel and publish nowhere (a naive deployment would hand the agent
    the shared URL, with every key and channel)."""
    capability = AgentCapability(
        tiers={0, 1},
        read_prefixes={1: ("team:", "agent:a:")},
        write_prefixes={1: ("agent:a:",)},
    )
    credentials = await provision(capability, "a")
    space = f"sagemem:{{{namespace}.l2}}:"
    # The server holding the L2 space's keys (on a cluster, found on the grant's credentials).
    raw = aioredis.Redis.from_url(
        await namespace_node_url(credentials.redis_url, f"{namespace}.l2")
    )
    admin_redis = aioredis.Redis.from_url(await namespace_node_url(redis_url, f"{namespace}.l2"))
    try:
        assert await raw.set(space + "agent:a:x", b";1") is True
        assert await raw.get(space + "agent:a:x") == b";1"
        assert await raw.get(space + "team:y") is None
        for forbidden in (
            raw.set(space + "team:y", b";2"),
            raw.get(space + "secret"),
            raw.get(f"sagemem:{{{namespace}}}:agent:a:x"),
            raw.get(f"sagemem:{{other{namespace}.l2}}:agent:a:x"),
            raw.keys("*"),
            raw.scan(0),
            raw.flushall(),
            raw.config_get("*"),
            raw.acl_list(),
            raw.client_list(),
            raw.publish(f"sagemem-bus:{{{namespace}}}:b|i|agent:a:x", b"forged"),
            raw.publish(f"sagemem-bus:{{{namespace}}}:a|i|agent:a:x", b"forged"),
        ):
            with pytest.raises(NoPermissionError):
                await forbidden
        assert await admin_redis.exists(space + "team:y") == 0
        pubsub = raw.pubsub()
        own = f"sagemem-bus:{{{namespace}}}:a|*"
        assert await _subscribe(pubsub, own, pattern=True) == "psubscribe"
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        for channel, pattern in (
            (f"sagemem-bus:{{{namespace}}}:*", True),
            (f"sagemem-bus:{{{namespace}}}:b|*", True),
            (f"sagemem-bus:{{{namespace}}}:b|i|team:y", False),
        ):
            refused = raw.pubsub()
            with pytest.raises(NoPermissionError):
                await _subscribe(refused, channel, pattern=pattern)
            await refused.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
    finally:
        await raw.aclose()
        await admin_redis.aclose()


async def test_l3_writer_may_publish_but_not_listen_to_other_agents(
    provision: Provision, namespace: str
) -> None:
    """The bus: an agent that may write L3 publishes to other agents' channels, invalidations
    only of the keys it may write and recalls of those it may read (a naive grant, PUBLISH on
    all of `sagemem-bus:<ns>:*`, let it forge invalidations of any key), but cannot subscribe
    to them (it would learn the keys they hold); it writes the L3-labelled L2 copies of its
    write prefixes only."""
    credentials = await provision(TEAM_READER, "a")
    raw = aioredis.Redis.from_url(await namespace_node_url(credentials.redis_url, namespace))
    bus = f"sagemem-bus:{{{namespace}}}:b"
    try:
        assert await raw.publish(f"{bus}|i|agent:a:k", b"x") == 0
        assert await raw.publish(f"{bus}|r|team:k", b"x") == 0
        assert await raw.publish(f"{bus}|r|agent:a:k", b"x") == 0
        for channel in (f"{bus}|i|team:k", f"{bus}|i|secret:k", f"{bus}|r|secret:k", bus):
            with pytest.raises(NoPermissionError):
                await raw.publish(channel, b"forged")
            with pytest.raises(NoPermissionError):  # sharded pub/sub: the same rules
                await raw.spublish(channel, b"forged")
        assert await raw.spublish(f"{bus}|i|agent:a:k", b"x") == 0
        own = raw.pubsub()  # sharded pub/sub: its own channels, about any key
        assert await _subscribe(own, f"sagemem-bus:{{{namespace}}}:a|i|secret:k", sharded=True) == (
            "ssubscribe"
        )
        await own.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        assert await raw.set(f"sagemem:{{{namespace}}}:agent:a:k", b"1;1") is True
        assert await raw.get(f"sagemem:{{{namespace}}}:team:k") is None
        with pytest.raises(NoPermissionError):
            await raw.set(f"sagemem:{{{namespace}}}:team:k", b"1;1")
        with pytest.raises(NoPermissionError):
            await raw.get(f"sagemem:{{{namespace}}}:secret:k")
        for sharded in (False, True):
            pubsub = raw.pubsub()
            with pytest.raises(NoPermissionError):
                await _subscribe(pubsub, f"sagemem-bus:{{{namespace}}}:b|i|team:k", sharded=sharded)
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
    finally:
        await raw.unlink(f"sagemem:{{{namespace}}}:agent:a:k")
        await raw.aclose()


async def test_postgres_role_without_l3_read_is_refused_the_table(
    provision: Provision, pg_schema: str
) -> None:
    """Bypass at L3: the role of an L1+L2 agent can neither read nor write the L3 table."""
    credentials = await provision(RESTRICTED, "intern")
    connection = await asyncpg.connect(credentials.postgres_dsn, timeout=10)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.fetch(f'SELECT * FROM "{pg_schema}".l3_entries')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(
                f'INSERT INTO "{pg_schema}".l3_entries (namespace, key, value, version, deleted) '
                "VALUES ('x', 'k', '1', 1, false)"
            )
    finally:
        await connection.close(timeout=10)


async def test_row_level_security_limits_role_to_its_namespace_and_prefixes(
    provision: Provision,
    postgres_dsn: str,
    namespace: str,
    pg_schema: str,
    raw_postgres: asyncpg.Connection,
) -> None:
    """RLS on the shared table: the role sees only its namespace's rows under its read
    prefixes, and inserts or updates only under its write prefixes (a naive GRANT on the table
    would expose every namespace and key)."""
    home = L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema)
    neighbour = L3Tier(postgres_dsn, namespace=namespace + ".other", schema=pg_schema)
    async with home, neighbour:
        for key in ("team:plan", "agent:a:note", "secret:key"):
            await home.write(key, key.upper())
        await neighbour.write("team:plan", "NEIGHBOUR")
        credentials = await provision(TEAM_READER, "a")
        table = f'"{pg_schema}".l3_entries'
        before = await raw_postgres.fetch(f"SELECT * FROM {table} ORDER BY namespace, key")
        role = await asyncpg.connect(credentials.postgres_dsn, timeout=10)
        try:
            visible = await role.fetch(f"SELECT namespace, key FROM {table} ORDER BY key")
            assert [(r[0], r[1]) for r in visible] == [
                (namespace, "agent:a:note"),
                (namespace, "team:plan"),
            ]
            updated = await role.execute(
                f"UPDATE {table} SET value = '\"x\"' WHERE key IN ('secret:key', 'team:plan')"
            )
            assert updated == "UPDATE 0"
            for namespace_, key in ((namespace, "secret:new"), (namespace + ".other", "agent:a:1")):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await role.execute(
                        f"INSERT INTO {table} (namespace, key, value, version, deleted) "
                        "VALUES ($1, $2, '1', 1, false)",
                        namespace_,
                        key,
                    )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await role.execute(
                    f"UPDATE {table} SET key = 'team:moved' WHERE key = 'agent:a:note'"
                )
            for statement in (
                f"DELETE FROM {table}",
                f"TRUNCATE {table}",
                f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await role.execute(statement)
            assert await raw_postgres.fetch(f"SELECT * FROM {table} ORDER BY namespace, key") == (
                before
            )
            inserted = await role.execute(
                f"INSERT INTO {table} (namespace, key, value, version, deleted) "
                "VALUES ($1, 'agent:a:new', '1', 1, false)",
                namespace,
            )
            assert inserted == "INSERT 0 1"
        finally:
            await role.close(timeout=10)
        assert await home.get("agent:a:new") == 1


async def test_scoped_prefixes_and_compare_and_swap_on_real_tiers(
    hierarchy: MemoryHierarchy,
) -> None:
    """Per-prefix grants: the team reader sees team keys, writes only its own at L3 (also by
    compare-and-swap), and an out-of-grant attempt changes nothing."""
    await hierarchy.set("team:plan", "ship", tier_index=2)
    await hierarchy.set("secret:key", "hidden", tier_index=2)
    agent = ScopedHierarchy(hierarchy, TEAM_READER, agent_id="a")
    assert await agent.get("team:plan") == "ship"
    assert await agent.get("secret:key") is None
    version = await agent.set("agent:a:note", "mine", tier_index=2)
    assert isinstance(version, int)
    assert await agent.compare_and_swap("agent:a:note", "mine2", version) == version + 1
    with pytest.raises(VersionConflict):
        await agent.compare_and_swap("agent:a:note", "stale", version)
    for attempt in (
        agent.set("team:plan", "sabotage", tier_index=2),
        agent.compare_and_swap("team:plan", "sabotage", 1),
        agent.delete("team:plan"),
    ):
        with pytest.raises(ScopeViolationError):
            await attempt
    assert await hierarchy.get("team:plan") == "ship"
    assert await agent.delete("agent:a:note") is True
    assert await hierarchy.get("agent:a:note") is None
    await agent.aclose()


async def test_revoked_grant_can_no_longer_log_in(
    provision: Provision, redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """Revoking deletes the Redis user (dropping its open connections) and the Postgres role."""
    credentials = await provision(TEAM_READER, "a")
    raw = aioredis.Redis.from_url(credentials.redis_url, retry_on_error=[])
    try:
        assert await raw.ping() is True
        listed = await list_grants(redis_url=redis_url, postgres_dsn=postgres_dsn)
        mine = [g for g in listed if g.namespace == namespace]
        assert [(g.agent_id, g.redis_username, g.postgres_role) for g in mine] == [
            ("a", credentials.redis_username, credentials.postgres_role)
        ]
        assert await revoke_grant(
            agent_id="a",
            namespace=namespace,
            redis_url=redis_url,
            postgres_dsn=postgres_dsn,
            schema=pg_schema,
        )
        with pytest.raises(RedisError):
            await raw.ping()
    finally:
        await raw.aclose()
    fresh = aioredis.Redis.from_url(credentials.redis_url)
    try:
        with pytest.raises(AuthenticationError):
            await fresh.ping()
    finally:
        await fresh.aclose()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(credentials.postgres_dsn, timeout=10)
    assert await _leftover_grants(redis_url, postgres_dsn, namespace) == []
    assert not await revoke_grant(
        agent_id="a",
        namespace=namespace,
        redis_url=redis_url,
        postgres_dsn=postgres_dsn,
        schema=pg_schema,
    )


@pytest.fixture
def cli_cleanup(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> Iterator[None]:
    """Revokes the CLI test's grant even if the test fails."""
    try:
        yield
    finally:
        asyncio.run(
            revoke_grant(
                agent_id="cli-agent",
                namespace=namespace,
                redis_url=redis_url,
                postgres_dsn=postgres_dsn,
                schema=pg_schema,
            )
        )


def test_grants_cli_creates_lists_and_revokes(
    redis_url: str,
    postgres_dsn: str,
    namespace: str,
    pg_schema: str,
    cli_cleanup: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sagemem grants create` prints eval-able credential lines; list shows it; revoke ends it;
    a contradictory grant exits with status 2 and a message."""
    endpoints = ["--redis-url", redis_url, "--postgres-dsn", postgres_dsn]
    identity = ["--agent", "cli-agent", "--namespace", namespace, "--schema", pg_schema]
    status = main(
        [
            "create",
            *identity,
            "--tiers",
            "0,1,2",
            "--l3-read",
            "--read-prefix",
            "2=team:",
            *endpoints,
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assigned = dict(
        line.split("=", 1) for line in out.splitlines() if not line.startswith("export")
    )
    assert sorted(assigned) == ["SAGEMEM_POSTGRES_DSN", "SAGEMEM_REDIS_URL"]
    redis_credentials = shlex.split(assigned["SAGEMEM_REDIS_URL"])[0]
    assert "sagemem-grant" in redis_credentials
    assert main(["list", *endpoints]) == 0
    listing = capsys.readouterr().out
    user = redis_username(agent_id="cli-agent", namespace=namespace)
    role = postgres_role_name(agent_id="cli-agent", namespace=namespace, schema=pg_schema)
    assert f"redis={user}" in listing
    assert f"postgres={role}" in listing
    assert main(["create", *identity, "--tiers", "0,1", "--l3-write", *endpoints]) == 2
    assert "l3_write=True" in capsys.readouterr().err
    assert main(["revoke", *identity, *endpoints]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["list", *endpoints]) == 0
    assert user not in capsys.readouterr().out


@pytest.fixture
async def coherent_hierarchy(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> AsyncIterator[MemoryHierarchy]:
    """A privileged agent's coherent hierarchy (CoherentL1Tier "boss", L2Tier, L3Tier)."""
    bus = CoherenceBus(url=redis_url, namespace=namespace)
    await bus.connect()
    home = L3Tier(dsn=postgres_dsn, namespace=namespace, schema=pg_schema)
    l2 = L2Tier(url=redis_url, namespace=namespace)
    l1 = CoherentL1Tier(agent_id="boss", bus=bus, home=home)
    hierarchy = MemoryHierarchy(tiers=[l1, l2, home])
    try:
        await hierarchy.connect()
        yield hierarchy
    finally:
        await l1.aclose()
        await l2.clear()
        for tier in (l2, home):
            await tier.aclose()
        await bus.aclose()


async def test_bus_carries_no_invalidation_for_keys_outside_the_grant(
    coherent_hierarchy: MemoryHierarchy, provision: Provision, namespace: str
) -> None:
    """The bus: invalidations go only to registered holders, and the agent's Redis user can
    register (in the coherence directory) only for keys it may read, so it learns nothing of
    other keys; a naive grant (all of `sagemem-dir:<ns>:*`) would let it register for any key
    and receive the key names of every write. With sharded pub/sub (a cluster's default) the
    agent listens on its own channels of both keys, which its grant allows."""
    capability = AgentCapability(tiers={0, 1, 2}, l3_write=False, read_prefixes={2: ("team:",)})
    credentials = await provision(capability, "intern")
    raw = aioredis.Redis.from_url(await namespace_node_url(credentials.redis_url, namespace))
    pubsub = raw.pubsub()
    boss = coherent_hierarchy.tiers[0]
    assert isinstance(boss, CoherentL1Tier)
    sharded = boss.bus.sharded
    try:
        own = f"sagemem-bus:{{{namespace}}}:intern|*"
        if sharded:
            for key in ("secret:k", "team:x"):
                channel = f"sagemem-bus:{{{namespace}}}:intern|i|{key}"
                assert await _subscribe(pubsub, channel, sharded=True) == "ssubscribe"
        else:
            assert await _subscribe(pubsub, own, pattern=True) == "psubscribe"
        far_ms = 2**52
        with pytest.raises(NoPermissionError):
            await raw.zadd(f"sagemem-dir:{{{namespace}}}:holders:secret:k", {"intern": far_ms})
        assert (
            await raw.zadd(f"sagemem-dir:{{{namespace}}}:holders:team:x", {"intern": far_ms}) == 1
        )
        await coherent_hierarchy.set("secret:k", "hidden", tier_index=2)
        await coherent_hierarchy.set("team:x", "plan", tier_index=2)
        async with asyncio.timeout(10):
            message = None
            while message is None or message["type"] not in ("pmessage", "smessage"):
                message = await pubsub.get_message(timeout=1.0)
        assert b"team:x" in message["data"]
        assert b"secret" not in message["data"]
        assert message["channel"] == f"sagemem-bus:{{{namespace}}}:intern|i|team:x".encode()
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        await raw.aclose()


async def test_scoped_views_of_a_coherent_hierarchy(coherent_hierarchy: MemoryHierarchy) -> None:
    """With a coherent L1 the same labels hold: L3 values (read or owned through the protocol)
    are invisible to an L1+L2 agent, whose tier-1 writes never shadow them."""
    await coherent_hierarchy.set("belief:x", "truth", tier_index=2)
    await coherent_hierarchy.set("belief:y", "owned", tier_index=0)  # held Modified in boss's L1
    restricted = ScopedHierarchy(coherent_hierarchy, RESTRICTED, agent_id="intern")
    reader = ScopedHierarchy(coherent_hierarchy, AgentCapability({0, 1, 2}), agent_id="r")
    assert await restricted.get("belief:x") is None
    assert await restricted.get("belief:y") is None
    await restricted.set("belief:x", "forged", tier_index=1)
    assert await reader.get("belief:x") == "truth"
    assert await reader.get("belief:y") == "owned"
    assert await coherent_hierarchy.get("belief:x") == "truth"
    assert await restricted.get("belief:x") == "forged"
    assert await reader.delete("belief:x") is True
    assert await coherent_hierarchy.get("belief:x") is None
    for view in (restricted, reader):
        await view.aclose()


async def test_a_restricted_coherent_agent_runs_on_its_credentials_and_cannot_forge(
    coherent_hierarchy: MemoryHierarchy,
    provision: Provision,
    admin_redis: aioredis.Redis,
    namespace: str,
    pg_schema: str,
) -> None:
    """A coherent agent whose process holds only its grant's credentials takes part in the
    protocol (it reads team keys without writing their L2 copies, and its writes invalidate the
    privileged agent's copies), but it
    cannot invalidate copies of keys it may only read: not through the library (a typed
    error, nothing changed), not with a raw PUBLISH on the victim's channel (NOPERM), and not
    by hiding a forged message on a channel its ACL admits (the victim's bus drops it, since
    the channel does not name the key). A naive grant (PUBLISH on all of `sagemem-bus:<ns>:*`)
    admitted all three: the boss's copy of `team:plan` would be dropped at will."""
    boss = coherent_hierarchy.tiers[0]
    assert isinstance(boss, CoherentL1Tier)
    await coherent_hierarchy.set("team:plan", "v1", tier_index=2)
    await coherent_hierarchy.set("agent:a:note", "draft", tier_index=2)
    assert await coherent_hierarchy.get("team:plan") == "v1"
    assert await coherent_hierarchy.get("agent:a:note") == "draft"
    assert boss.get_state("team:plan") is L1State.S
    assert boss.get_state("agent:a:note") is L1State.S
    copy_key = f"sagemem:{{{namespace}}}:team:plan"

    credentials = await provision(TEAM_READER, "a")
    bus = CoherenceBus(url=credentials.redis_url, namespace=namespace)
    home = L3Tier(dsn=credentials.postgres_dsn, namespace=namespace, schema=pg_schema)
    agent = CoherentL1Tier(agent_id="a", bus=bus, home=home)
    raw = aioredis.Redis.from_url(await namespace_node_url(credentials.redis_url, namespace))
    try:
        await bus.connect()
        await home.connect()
        await agent.start()
        assert await agent.get("agent:a:note") == "draft"
        # A key it may only read: the fill reads L2 and the home, and its leased write of the
        # L2 copy is refused by the server (only write prefixes may write copies) and skipped.
        saved = await admin_redis.get(copy_key)
        assert saved is not None  # the boss's fill stored it
        await admin_redis.delete(copy_key)
        assert await agent.get("team:plan") == "v1"
        assert await admin_redis.exists(copy_key) == 0
        await admin_redis.set(copy_key, saved)
        # Outside every prefix: the server refuses the first step (registering as a holder),
        # typed; a ScopedHierarchy over this agent would return None without asking.
        with pytest.raises(ScopeViolationError, match="secret:k"):
            await agent.get("secret:k")
        version = await agent.write_through("agent:a:note", "final")
        await wait_until(
            lambda: boss.get_state("agent:a:note") is L1State.I, "the boss's invalidation"
        )
        assert await coherent_hierarchy.get("agent:a:note") == "final"
        assert version >= 2

        copy_before = await admin_redis.get(copy_key)
        assert copy_before == saved
        received = boss.statistics().invalidations_received
        with pytest.raises(ScopeViolationError, match="team:plan"):
            await bus.publish_invalidate("team:plan", 99, ["boss"], sender="a")
        boss_bus = boss.bus
        publish = "SPUBLISH" if boss_bus.sharded else "PUBLISH"  # sharded: a cluster's default
        with pytest.raises(NoPermissionError):
            await raw.execute_command(  # type: ignore[no-untyped-call]  # untyped in redis-py
                publish, f"sagemem-bus:{{{namespace}}}:boss|i|team:plan", b"forged"
            )
        forged = InvalidateMessage(namespace, "team:plan", 99, "a", seq=1)
        hidden = f"sagemem-bus:{{{namespace}}}:boss|i|x|i|agent:a:y"  # admitted by `*|i|agent:a:*`
        if boss_bus.sharded:
            # The boss follows only the channels of keys it holds: the server delivers the
            # forgery to nobody.
            sent = await raw.execute_command(publish, hidden, encode(forged))  # type: ignore[no-untyped-call]  # untyped in redis-py
            assert sent == 0
        else:
            # Delivered (the counter below shows it); the count PUBLISH answers is not
            # asserted: on a cluster it counts only the subscribers of the node it talks to.
            await raw.publish(hidden, encode(forged))
            await wait_until(
                lambda: boss_bus.statistics().misaddressed_messages >= 1,
                "the forgery to be dropped",
            )
        assert boss.get_state("team:plan") is L1State.S
        assert boss.statistics().invalidations_received == received
        directory = RedisDirectory(bus.client, namespace=namespace)
        with pytest.raises(ScopeViolationError, match="team:plan"):
            await directory.invalidate("team:plan", 99, "sagemem.relay")
        assert await admin_redis.get(copy_key) == copy_before  # the refused relay deleted nothing
        assert boss.get_state("team:plan") is L1State.S
    finally:
        await raw.aclose()
        await agent.aclose()
        await home.aclose()
        await bus.aclose()


async def test_semantic_tier_role_sees_and_writes_only_its_prefixes(
    provision: Provision, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """Tier 3 (DRAM) at the server: a DRAMTier on the grant's DSN reads its read prefixes,
    writes its write prefixes, and a semantic search returns only rows it may see (a naive
    grant, or none at all, either exposed every key of the shared table to a nearest-neighbour
    search or left the granted tier unusable). A refused write raises ScopeViolationError
    and changes nothing."""
    capability = AgentCapability(
        tiers={0, 3}, read_prefixes={3: ("team:",)}, write_prefixes={3: ("agent:a:",)}
    )
    admin = DRAMTier(postgres_dsn, namespace=namespace, schema=pg_schema)
    async with admin:
        for key in ("team:plan", "secret:plan", "agent:b:plan"):
            await admin.set(key, f"the launch plan of {key}")
        credentials = await provision(capability, "a")
        own = DRAMTier(credentials.postgres_dsn, namespace=namespace, schema=pg_schema)
        async with own:
            assert await own.get("team:plan") == "the launch plan of team:plan"
            assert await own.get("secret:plan") is None
            hits = await own.search("the launch plan", limit=10)
            assert [hit.key for hit in hits] == ["team:plan"]
            await own.set("agent:a:plan", "my plan")
            assert await own.get("agent:a:plan") == "my plan"
            for key in ("team:plan", "secret:plan", "agent:b:new"):
                with pytest.raises(ScopeViolationError, match=key):
                    await own.set(key, "forged")
        assert await admin.get("team:plan") == "the launch plan of team:plan"
        assert await admin.get("secret:plan") == "the launch plan of secret:plan"
        assert await admin.get("agent:b:new") is None
        assert await admin.get("agent:a:plan") == "my plan"


# Characters that are special to Redis globs, to the channel encoding, or to both.
_AWKWARD = st.text(st.sampled_from("abi:|%7C25*?[]\\é"), max_size=8)


@pytest.fixture
def acl_probe(redis_url: str, namespace: str) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    """An administrator client and a client logged in as a scratch ACL user, deleted after."""
    admin = redis.Redis.from_url(redis_url)
    username = f"sagemem-probe:{namespace}"
    admin.execute_command("ACL", "SETUSER", username, "on", ">probe-password", "+auth")  # type: ignore[no-untyped-call]  # untyped in redis-py
    kwargs = admin.connection_pool.connection_kwargs
    user = redis.Redis(
        host=kwargs["host"], port=kwargs["port"], username=username, password="probe-password"
    )
    try:
        yield admin, user
    finally:
        user.close()
        admin.execute_command("ACL", "DELUSER", username)  # type: ignore[no-untyped-call]  # untyped in redis-py
        admin.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(prefix="x|", key="x|y")
@example(prefix="a", key="z|i|a")
@example(prefix="a*", key="ab")
@example(prefix="%7C", key="|")
@given(prefix=_AWKWARD, key=_AWKWARD.filter(bool))
def test_redis_admits_an_invalidation_exactly_for_keys_under_a_write_prefix(
    acl_probe: tuple[redis.Redis, redis.Redis], namespace: str, prefix: str, key: str
) -> None:
    """The grant's channel rules, evaluated by Redis's own glob matcher: a writer of prefix P
    may publish the invalidation of key k to any agent exactly when k starts with P, whatever
    glob or separator characters P and k hold (an unescaped prefix such as `a*` would admit
    `ab...` keys' channels too, and without encoding the key's `|` the channel of key `z|i|a`
    would be admitted by prefix `a`)."""
    admin, user = acl_probe
    capability = AgentCapability(
        tiers={0, 1, 2}, read_prefixes={2: ("",)}, write_prefixes={2: (prefix,)}
    )
    rules = redis_acl_rules(capability, agent_id="a", namespace=namespace)
    admin.execute_command(
        "ACL", "SETUSER", f"sagemem-probe:{namespace}", *rules, "on", ">probe-password"
    )  # type: ignore[no-untyped-call]  # untyped in redis-py
    channel = channel_name(namespace, "b", MessageKind.INVALIDATE, key)
    try:
        user.publish(channel, b"probe")
        admitted = True
    except redis.exceptions.NoPermissionError:
        admitted = False
    assert admitted == key.startswith(prefix), (prefix, key, channel)


async def test_a_bus_on_credentials_without_the_bus_says_why_it_cannot_subscribe(
    provision: Provision, namespace: str
) -> None:
    """An L1+L2 grant has no part in the protocol: a CoherenceBus on its credentials cannot
    subscribe, and the error names the server's refusal instead of only a timeout."""
    credentials = await provision(RESTRICTED, "intern")
    bus = CoherenceBus(url=credentials.redis_url, namespace=namespace, subscribe_timeout_s=1.0)
    async with bus:

        async def ignore(event: object) -> None:
            del event

        with pytest.raises(BusUnavailable, match="NoPermissionError"):
            await bus.subscribe("intern", ignore)


async def test_a_restricted_writer_sends_updates_only_of_keys_it_may_write(
    coherent_hierarchy: MemoryHierarchy,
    provision: Provision,
    admin_redis: aioredis.Redis,
    namespace: str,
    pg_schema: str,
) -> None:
    """Write-update under a grant: the agent's write-through of a key under its write prefix
    reaches the boss's copy as an update (the boss keeps hitting, on the new value), but its
    credentials cannot publish an update of a key it may only read, neither raw (NOPERM) nor
    through the relay script (ScopeViolationError, nothing deleted)."""
    boss = coherent_hierarchy.tiers[0]
    assert isinstance(boss, CoherentL1Tier)
    await coherent_hierarchy.set("team:plan", "v1", tier_index=2)
    await coherent_hierarchy.set("agent:a:note", "draft", tier_index=2)
    assert await coherent_hierarchy.get("team:plan") == "v1"
    assert await coherent_hierarchy.get("agent:a:note") == "draft"
    credentials = await provision(TEAM_READER, "a")
    bus = CoherenceBus(url=credentials.redis_url, namespace=namespace)
    home = L3Tier(dsn=credentials.postgres_dsn, namespace=namespace, schema=pg_schema)
    agent = CoherentL1Tier(agent_id="a", bus=bus, home=home, write_policy="update")
    raw = aioredis.Redis.from_url(await namespace_node_url(credentials.redis_url, namespace))
    try:
        await bus.connect()
        await home.connect()
        await agent.start()
        await agent.write_through("agent:a:note", {"final": True})
        await wait_until(lambda: boss.statistics().updates_received == 1, "the boss's update")
        assert boss.get_state("agent:a:note") is L1State.S
        assert await coherent_hierarchy.get("agent:a:note") == {"final": True}
        forged = UpdateMessage(namespace, "team:plan", 99, "forged", "a", seq=1)
        with pytest.raises(NoPermissionError):
            await raw.publish(f"sagemem-bus:{{{namespace}}}:boss|u|team:plan", encode(forged))
        copy_key = f"sagemem:{{{namespace}}}:team:plan"
        copy_before = await admin_redis.get(copy_key)
        directory = RedisDirectory(bus.client, namespace=namespace)
        with pytest.raises(ScopeViolationError, match="team:plan"):
            await directory.relay(
                "team:plan", 99, "a", [RELAY_L2_DELETE, RELAY_PUBLISH_UPDATES], value="forged"
            )
        assert await admin_redis.get(copy_key) == copy_before
        assert await coherent_hierarchy.get("team:plan") == "v1"
        assert boss.statistics().updates_received == 1
    finally:
        await raw.aclose()
        await agent.aclose()
        await home.aclose()
        await bus.aclose()
