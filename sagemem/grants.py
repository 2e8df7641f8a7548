"""Server-side enforcement of an `AgentCapability`: a Redis ACL user and a PostgreSQL role per
agent, so an agent's process holding only those credentials cannot read or write outside its
grant even when it bypasses sagemem and talks to the servers directly.

Redis (user `sagemem-grant:<ns>:<agent>`, created with `reset`, so it starts with no keys, no
channels and no commands):

- tier 1, the L2-labelled space: `%R~sagemem:<ns>.l2:<prefix>*` per read prefix and
  `%W~...` per write prefix;
- the L3-labelled copies `sagemem:<ns>:*` (the protocol's L2): read per L3 read prefix when the
  agent has tier 1 and L3 read, written only per L3 write prefix; with L3 read, the coherence
  directory keys `sagemem-dir:<ns>:{lease,holders,acks,relayed}:<prefix>*` of the L3 read prefixes;
- the bus (channels `sagemem-bus:<ns>:<agent>|<i, u or r>|<key>`, see
  `sagemem.coherence.messages.channel_name`): the root permissions allow only PSUBSCRIBE to the
  agent's own pattern `sagemem-bus:<ns>:<agent>|*` and, for sharded pub/sub, SSUBSCRIBE to the
  agent's own channels. An agent that may write L3 gets a selector allowing PUBLISH (or
  SPUBLISH) of invalidations (`|i|`) and updates (`|u|`, write-update) of its L3 write prefixes
  and of recalls (`|r|`) of its L3 read prefixes, to any agent, plus the sequence counters
  those bump, and nothing else: it cannot forge an invalidation of a key it may not write,
  and cannot listen to anyone else's messages;
- commands: only those sagemem's tiers send (GET, SET, UNLINK, EXISTS, PING, ...; the scripting
  and sorted-set commands of the coherence directory when L3 is granted). No SCAN or KEYS (they
  list key names regardless of key patterns), no FLUSH*, CONFIG, ACL, CLIENT LIST, MONITOR.

PostgreSQL (role `sagemem_g_<hash of schema, namespace, agent>`, LOGIN with a generated
password, commented with the grant so `list_grants` can show it): USAGE on the schema; SELECT
on `<schema>.l3_entries` with L3 read, INSERT and UPDATE with L3 write (never DELETE, TRUNCATE or
DDL; sagemem deletes by tombstoning). Row-level security is enabled on the table and the role's
policies admit only rows of its namespace whose key starts with one of its prefixes (SELECT:
read or write prefixes, since sagemem's writes read the row they change; INSERT/UPDATE: write
prefixes). With tier 3 (DRAM) granted, the same on `<schema>.dram_entries` with tier 3's
prefixes, so semantic searches see only permitted rows. Superusers and the table owner bypass
RLS, as they must.

The servers can only enforce this when the restricted credentials are the ONLY way in: the
Redis `default` user must not be `nopass`, and Postgres must authenticate by password (not
`trust`). The embedded servers of `sagemem.services` comply (a random `requirepass`, SCRAM for
every Postgres connection); their administrator passwords live in the runtime directory, which
only the servers' OS user can read, so restricted agents run under another OS user.

This module talks to the servers with the driver clients directly (it is an adapter); driver
errors become `GrantError` with the cause chained.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import secrets
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sagemem import keyspace
from sagemem.coherence.home import HomeStore
from sagemem.coherence.messages import (
    channel_suffix,
    check_agent_id,
    subscription_pattern,
)
from sagemem.endpoints import redacted_url
from sagemem.errors import ConfigurationError, SageMemError
from sagemem.redis_topology import (
    RedisTopology,
    cluster_map,
    topology_or_single_node,
    url_at,
)
from sagemem.scope import DRAM_INDEX, L2_INDEX, L2_SPACE_SUFFIX, L3_INDEX, AgentCapability
from sagemem.services import (
    POSTGRES_DSN_ENV,
    REDIS_URL_ENV,
    resolve_postgres_dsn,
    resolve_redis_url,
)
from sagemem.spec.vocabulary import MessageKind
from sagemem.tiers.dram import DRAMTier
from sagemem.tiers.l3 import L3Tier, check_schema
from sagemem.values import check_namespace

__all__ = [
    "GrantCredentials",
    "GrantError",
    "GrantRecord",
    "create_grant",
    "list_grants",
    "main",
    "postgres_role_name",
    "postgres_statements",
    "redis_acl_rules",
    "redis_username",
    "revoke_grant",
]

REDIS_USER_PREFIX: Final = keyspace.GRANT_USER_PREFIX
POSTGRES_ROLE_PREFIX: Final = "sagemem_g_"
_TIMEOUT_S: Final = 30.0
_POLICY_SUFFIXES: Final = ("_select", "_insert", "_update")
_DRAM_POLICY_SUFFIX: Final = "_dram"
DRAM_TABLE: Final = "dram_entries"  # sagemem.tiers.dram.DRAMTier's table
# What sagemem's L2 tier sends (plus the handshake redis-py performs on connect).
_L2_COMMANDS: Final = (
    "+ping",
    "+get",
    "+set",
    "+unlink",
    "+exists",
    "+hello",
    "+client|setinfo",
    "+client|setname",
    "+client|getname",
    # On a Redis/Valkey Cluster: where the namespace's slot lives (the bus, L2Tier's cluster
    # client), the key positions of commands (the cluster client), the node's id (the strict
    # settle script's directory birth).
    "+cluster|slots",
    "+command",
    "+cluster|myid",
)
# What the coherence directory and bus send for an agent taking part in the protocol.
_COHERENCE_COMMANDS: Final = (
    "+evalsha",
    "+eval",
    "+script|load",
    "+script|exists",
    "+zadd",
    "+zrem",
    "+zrange",
    "+zrangebyscore",
    "+zscore",
    "+hget",
    "+hgetall",
    "+pexpire",
    "+pexpireat",
    "+mget",
    "+del",
    "+hset",
    "+hmget",
    "+zcard",
    "+zremrangebyscore",
    "+time",
)


class GrantError(SageMemError, RuntimeError):
    """A server refused or failed to provision, revoke or list grants (the cause is chained)."""


@dataclass(frozen=True, slots=True)
class GrantCredentials:
    """The restricted credentials of one agent: give its process these and nothing else."""

    agent_id: str
    namespace: str
    schema: str
    redis_username: str
    postgres_role: str
    redis_url: str = field(repr=False)  # holds the password
    postgres_dsn: str = field(repr=False)  # holds the password

    @property
    def l2_namespace(self) -> str:
        """The namespace of the agent's L2-labelled space (`L2Tier(namespace=...)`)."""
        return self.namespace + L2_SPACE_SUFFIX


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """A provisioned grant as the servers show it (no secrets)."""

    agent_id: str
    namespace: str
    schema: str | None
    redis_username: str | None
    postgres_role: str | None
    capability: str | None


def _check_agent(agent_id: object) -> str:
    return check_agent_id(agent_id)


def _check_schema(schema: object) -> str:
    return check_schema(schema)


def redis_username(*, agent_id: str, namespace: str) -> str:
    """The Redis ACL user of an agent in a namespace."""
    return f"{REDIS_USER_PREFIX}{check_namespace(namespace)}:{_check_agent(agent_id)}"


def postgres_role_name(*, agent_id: str, namespace: str, schema: str) -> str:
    """The Postgres role of an agent in a namespace and schema (a hash keeps it <= 63 bytes)."""
    identity = "\0".join(
        (_check_schema(schema), check_namespace(namespace), _check_agent(agent_id))
    )
    return POSTGRES_ROLE_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:32]


def _glob_escape(text: str) -> str:
    """`text` with Redis glob characters escaped, so a prefix matches only itself."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _prefixes(prefixes: dict[int, tuple[str, ...]], tier: int) -> tuple[str, ...]:
    return prefixes.get(tier, ("",))


def redis_acl_rules(capability: AgentCapability, *, agent_id: str, namespace: str) -> list[str]:
    """The `ACL SETUSER` rules (after the user name and password) enforcing `capability`."""
    check_namespace(namespace)
    agent = _check_agent(agent_id)
    reads = dict(capability.read_prefixes)
    writes = dict(capability.write_prefixes)
    rules = ["reset", "resetkeys", "resetchannels", "-@all", *_L2_COMMANDS]
    space = keyspace.l2_prefix(namespace + L2_SPACE_SUFFIX)
    copies = keyspace.l2_prefix(namespace)
    directory = keyspace.directory_prefix(namespace)
    if L2_INDEX in capability.tiers:
        rules += [f"%R~{_glob_escape(space + p)}*" for p in _prefixes(reads, L2_INDEX)]
        rules += [f"%W~{_glob_escape(space + p)}*" for p in _prefixes(writes, L2_INDEX)]
    if capability.l3_read:
        l3_reads = _prefixes(reads, L3_INDEX)
        if L2_INDEX in capability.tiers:
            rules += [f"%R~{_glob_escape(copies + p)}*" for p in l3_reads]
        rules += list(_COHERENCE_COMMANDS)
        for kind in ("lease:", "holders:", "acks:", "relayed:"):
            rules += [f"~{_glob_escape(directory + kind + p)}*" for p in l3_reads]
        # The directory's birth key: a strict write checks that no registration was forgotten.
        rules.append(f"~{_glob_escape(keyspace.DIRECTORY_BIRTH_KEY)}")
        rules.append(f"~{_glob_escape(keyspace.directory_birth_key(namespace))}")
        # The bus's listener reads its own sequence counter (MGET) when it (re)subscribes.
        rules.append(f"%R~{_glob_escape(f'{keyspace.bus_prefix(namespace)}{agent}:seq')}")
    # PSUBSCRIBE is allowed only for a pattern that literally equals an allowed one; SSUBSCRIBE
    # (sharded pub/sub) for the agent's own channels, whatever key they name.
    own = subscription_pattern(namespace, agent)
    rules += [
        f"&{_glob_escape(own[:-1])}*",
        "+psubscribe",
        "+punsubscribe",
        "+ssubscribe",
        "+sunsubscribe",
    ]
    if capability.l3_write:
        l3_writes = _prefixes(writes, L3_INDEX)
        if L2_INDEX in capability.tiers:
            rules += [f"%W~{_glob_escape(copies + p)}*" for p in l3_writes]
        # A selector: PUBLISH (and the sequence counters it bumps) of invalidations and updates
        # (write-update) of the keys it may write and of recalls of the keys it may read, and
        # nothing else. A channel holds exactly two '|' (agent ids have none, channel_key
        # encodes the key's), so `*|i|P*` matches exactly the invalidations of the keys
        # starting with P.
        bus = _glob_escape(keyspace.bus_prefix(namespace))
        channels = [
            f"&{bus}*{_glob_escape(channel_suffix(kind, p))}*"
            for kind in (MessageKind.INVALIDATE, MessageKind.UPDATE)
            for p in l3_writes
        ]
        channels += [
            f"&{bus}*{_glob_escape(channel_suffix(MessageKind.RECALL, p))}*"
            for p in _prefixes(reads, L3_INDEX)
        ]
        rules.append(
            f"(+publish +spublish +evalsha +eval +incr +pexpire {' '.join(channels)} ~{bus}*:seq)"
        )
    return rules


def _literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings is on in every supported Postgres)."""
    if "\0" in text:
        raise ConfigurationError(f"{text!r:.80} contains a NUL character, which SQL cannot hold")
    return "'" + text.replace("'", "''") + "'"


def _key_condition(prefixes: tuple[str, ...]) -> str:
    if "" in prefixes:
        return "true"
    return "(" + " OR ".join(f"starts_with(key, {_literal(p)})" for p in prefixes) + ")"


def postgres_statements(
    capability: AgentCapability, *, role: str, namespace: str, schema: str, password: str
) -> list[str]:
    """The statements (run as a superuser, in one transaction) creating the role of a grant."""
    table = f'"{_check_schema(schema)}".l3_entries'
    namespace_condition = f"namespace = {_literal(check_namespace(namespace))}"
    quoted = f'"{role}"'
    statements = [
        f"CREATE ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT "
        f"NOREPLICATION NOBYPASSRLS PASSWORD {_literal(password)}",
        f'GRANT USAGE ON SCHEMA "{schema}" TO {quoted}',
    ]
    reads = dict(capability.read_prefixes)
    writes = dict(capability.write_prefixes)
    if capability.l3_read:
        write_prefixes = _prefixes(writes, L3_INDEX) if capability.l3_write else ()
        statements += _table_statements(
            table,
            role,
            namespace_condition,
            _prefixes(reads, L3_INDEX),
            write_prefixes,
            suffix="",
        )
    if DRAM_INDEX in capability.tiers:
        statements += _table_statements(
            f'"{schema}".{DRAM_TABLE}',
            role,
            namespace_condition,
            _prefixes(reads, DRAM_INDEX),
            _prefixes(writes, DRAM_INDEX),
            suffix=_DRAM_POLICY_SUFFIX,
        )
    return statements


def _table_statements(
    table: str,
    role: str,
    namespace_condition: str,
    read_prefixes: tuple[str, ...],
    write_prefixes: tuple[str, ...],
    *,
    suffix: str,
) -> list[str]:
    """SELECT on the rows of the read (and write) prefixes; with write prefixes, INSERT and
    UPDATE of theirs (sagemem deletes by tombstoning: never DELETE)."""
    quoted = f'"{role}"'
    visible = tuple(sorted(set(read_prefixes) | set(write_prefixes)))
    statements = [
        f"GRANT SELECT ON {table} TO {quoted}",
        f'CREATE POLICY "{role}{suffix}_select" ON {table} FOR SELECT TO {quoted} '
        f"USING ({namespace_condition} AND {_key_condition(visible)})",
    ]
    if write_prefixes:
        writable = f"{namespace_condition} AND {_key_condition(write_prefixes)}"
        statements += [
            f"GRANT INSERT, UPDATE ON {table} TO {quoted}",
            f'CREATE POLICY "{role}{suffix}_insert" ON {table} FOR INSERT TO {quoted} '
            f"WITH CHECK ({writable})",
            f'CREATE POLICY "{role}{suffix}_update" ON {table} FOR UPDATE TO {quoted} '
            f"USING ({writable}) WITH CHECK ({writable})",
        ]
    return statements


def _with_credentials(url: str, username: str, password: str) -> str:
    """`url` with its user and password replaced (host, port, path and query kept)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def _resolve(redis_url: str | None, postgres_dsn: str | None) -> tuple[str, str]:
    return resolve_redis_url(redis_url), resolve_postgres_dsn(postgres_dsn)


async def _command(client: aioredis.Redis, *args: str) -> object:
    # redis-py has no typed wrapper for ACL selectors and `%R~` rules, so send them raw.
    reply: object = await client.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped in redis-py
    return reply


async def _admin_redis(url: str) -> aioredis.Redis:
    client = aioredis.Redis.from_url(url, socket_timeout=_TIMEOUT_S)
    return client


async def _redis_nodes(url: str) -> list[str]:
    """The administrator URL of every server that must know a grant's user: the server at
    `url`, or on a Redis/Valkey Cluster every node, replicas too (ACL users are not shared
    by a cluster's nodes, and a replica promoted by a failover must know them)."""
    client = await _admin_redis(url)
    try:
        if await topology_or_single_node(client) is not RedisTopology.CLUSTER:
            return [url]
        slot_map = await cluster_map(client, 0)
    except SageMemError as error:
        raise GrantError(f"cannot find the Redis servers to provision: {error}") from error
    finally:
        await client.aclose()
    return [url_at(url, address) for address in slot_map.nodes]


async def _admin_postgres(dsn: str) -> asyncpg.Connection:
    try:
        connection: asyncpg.Connection = await asyncpg.connect(dsn, timeout=_TIMEOUT_S)
    except (asyncpg.PostgresError, OSError, TimeoutError) as error:
        raise GrantError(f"cannot connect to Postgres as an administrator: {error}") from error
    return connection


def _comment(agent_id: str, namespace: str, schema: str, capability: AgentCapability) -> str:
    return json.dumps(
        {"agent_id": agent_id, "namespace": namespace, "schema": schema, "grant": repr(capability)}
    )


async def create_grant(
    capability: AgentCapability,
    *,
    agent_id: str,
    namespace: str,
    redis_url: str | None = None,
    postgres_dsn: str | None = None,
    schema: str = "sagemem",
) -> GrantCredentials:
    """Provision (or re-provision, with new passwords) the Redis user and Postgres role of an
    agent's capability, using the administrator `redis_url` / `postgres_dsn` (None: the
    environment or the embedded servers); return the restricted credentials."""
    if not isinstance(capability, AgentCapability):
        raise ConfigurationError(
            f"create_grant needs an AgentCapability, got {type(capability).__name__}"
        )
    agent = _check_agent(agent_id)
    namespace = check_namespace(namespace)
    schema = _check_schema(schema)
    admin_redis, admin_postgres = await asyncio.to_thread(_resolve, redis_url, postgres_dsn)
    await revoke_grant(
        agent_id=agent,
        namespace=namespace,
        schema=schema,
        redis_url=admin_redis,
        postgres_dsn=admin_postgres,
    )
    # The tables must exist before policies can be attached to them; the tiers create them.
    await _ensure_tables(capability, admin_postgres, namespace, schema)
    username = redis_username(agent_id=agent, namespace=namespace)
    role = postgres_role_name(agent_id=agent, namespace=namespace, schema=schema)
    redis_password = secrets.token_hex(24)
    postgres_password = secrets.token_hex(24)
    rules = redis_acl_rules(capability, agent_id=agent, namespace=namespace)
    try:
        await _on_every_node(admin_redis, username, "SETUSER", *rules, "on", f">{redis_password}")
    except BaseException:
        with contextlib.suppress(GrantError):  # the first failure is the one to report
            await _delete_redis_user(admin_redis, username)  # from the nodes that took it
        raise
    try:
        connection = await _admin_postgres(admin_postgres)
        try:
            async with asyncio.timeout(_TIMEOUT_S), connection.transaction():
                # Enabling RLS hides every row from roles without a policy; sagemem's own
                # administrator connections (owner, superuser) are not affected.
                if capability.l3_read:
                    await connection.execute(
                        f'ALTER TABLE "{schema}".l3_entries ENABLE ROW LEVEL SECURITY'
                    )
                if DRAM_INDEX in capability.tiers:
                    await connection.execute(
                        f'ALTER TABLE "{schema}".{DRAM_TABLE} ENABLE ROW LEVEL SECURITY'
                    )
                for statement in postgres_statements(
                    capability,
                    role=role,
                    namespace=namespace,
                    schema=schema,
                    password=postgres_password,
                ):
                    await connection.execute(statement)
                comment = _comment(agent, namespace, schema, capability)
                await connection.execute(f'COMMENT ON ROLE "{role}" IS {_literal(comment)}')
        finally:
            await connection.close(timeout=_TIMEOUT_S)
    except (asyncpg.PostgresError, OSError, TimeoutError) as error:
        await _delete_redis_user(admin_redis, username)
        raise GrantError(f"Postgres refused to create role {role!r}: {error}") from error
    except BaseException:
        await _delete_redis_user(admin_redis, username)
        raise
    return GrantCredentials(
        agent_id=agent,
        namespace=namespace,
        schema=schema,
        redis_username=username,
        postgres_role=role,
        redis_url=_with_credentials(admin_redis, username, redis_password),
        postgres_dsn=_with_credentials(admin_postgres, role, postgres_password),
    )


async def _ensure_tables(
    capability: AgentCapability, admin_postgres: str, namespace: str, schema: str
) -> None:
    """Create the L3 table with the coherence home's columns (always) and, when tier 3 is
    granted and it is missing, the semantic tier's table with the default embedder's size (an
    existing one is left as is)."""
    async with L3Tier(admin_postgres, namespace=namespace, schema=schema) as l3:
        # the coherence home's columns too: the grant's role may not alter the table
        await HomeStore(l3).ensure_schema()
    if DRAM_INDEX not in capability.tiers:
        return
    connection = await _admin_postgres(admin_postgres)
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            exists = await connection.fetchval("SELECT to_regclass($1)", f'"{schema}".{DRAM_TABLE}')
    finally:
        await connection.close(timeout=_TIMEOUT_S)
    if not exists:
        async with DRAMTier(admin_postgres, namespace=namespace, schema=schema):
            pass


async def _on_every_node(url: str, username: str, subcommand: str, *rules: str) -> list[object]:
    """`ACL <subcommand> <username> <rules...>` on every server that must know the user
    (`_redis_nodes`); their replies, in order. A refusal is a `GrantError` naming the node."""
    replies: list[object] = []
    for node in await _redis_nodes(url):
        client = await _admin_redis(node)
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                replies.append(await _command(client, "ACL", subcommand, username, *rules))
        except (RedisError, OSError) as error:
            raise GrantError(
                f"Redis at {redacted_url(node)} refused ACL {subcommand} for {username!r}: {error}"
            ) from error
        finally:
            await client.aclose()
    return replies


async def _delete_redis_user(url: str, username: str) -> bool:
    """Delete the user from every server that knows it; True if one did."""
    return any(bool(reply) for reply in await _on_every_node(url, username, "DELUSER"))


async def _drop_role(connection: asyncpg.Connection, role: str, schema: str) -> bool:
    exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if not exists:
        return False
    async with connection.transaction():
        # Cut its sessions first: a dropped role's open connection would keep its rights.
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        for table, prefix in (("l3_entries", ""), (DRAM_TABLE, _DRAM_POLICY_SUFFIX)):
            if await connection.fetchval("SELECT to_regclass($1)", f'"{schema}".{table}'):
                for suffix in _POLICY_SUFFIXES:
                    await connection.execute(
                        f'DROP POLICY IF EXISTS "{role}{prefix}{suffix}" ON "{schema}".{table}'
                    )
        await connection.execute(f'DROP OWNED BY "{role}"')
        await connection.execute(f'DROP ROLE "{role}"')
    return True


async def revoke_grant(
    *,
    agent_id: str,
    namespace: str,
    redis_url: str | None = None,
    postgres_dsn: str | None = None,
    schema: str = "sagemem",
) -> bool:
    """Delete the agent's Redis user (disconnecting its clients) and Postgres role (ending its
    sessions); True if either existed. Idempotent."""
    agent = _check_agent(agent_id)
    namespace = check_namespace(namespace)
    schema = _check_schema(schema)
    admin_redis, admin_postgres = await asyncio.to_thread(_resolve, redis_url, postgres_dsn)
    removed = await _delete_redis_user(
        admin_redis, redis_username(agent_id=agent, namespace=namespace)
    )
    role = postgres_role_name(agent_id=agent, namespace=namespace, schema=schema)
    connection = await _admin_postgres(admin_postgres)
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            removed = await _drop_role(connection, role, schema) or removed
    except asyncpg.PostgresError as error:
        raise GrantError(f"Postgres refused to drop role {role!r}: {error}") from error
    finally:
        await connection.close(timeout=_TIMEOUT_S)
    return removed


async def list_grants(
    *, redis_url: str | None = None, postgres_dsn: str | None = None
) -> list[GrantRecord]:
    """Every provisioned grant, from the Redis users and Postgres roles sagemem created."""
    admin_redis, admin_postgres = await asyncio.to_thread(_resolve, redis_url, postgres_dsn)
    client = await _admin_redis(admin_redis)
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            users = await _command(client, "ACL", "USERS")
    except (RedisError, OSError) as error:
        raise GrantError(f"Redis refused ACL USERS: {error}") from error
    finally:
        await client.aclose()
    found: dict[tuple[str, str], dict[str, str | None]] = {}
    for raw in users if isinstance(users, list) else []:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        if name.startswith(REDIS_USER_PREFIX):
            namespace, _, agent = name[len(REDIS_USER_PREFIX) :].partition(":")
            found.setdefault((namespace, agent), {})["redis_username"] = name
    connection = await _admin_postgres(admin_postgres)
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            rows = await connection.fetch(
                "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
                "WHERE starts_with(rolname, $1) ORDER BY rolname",
                POSTGRES_ROLE_PREFIX,
            )
    except asyncpg.PostgresError as error:
        raise GrantError(f"Postgres refused to list roles: {error}") from error
    finally:
        await connection.close(timeout=_TIMEOUT_S)
    for role, comment in rows:
        try:
            described = json.loads(comment or "{}")
        except ValueError:
            described = {}
        key = (str(described.get("namespace", "?")), str(described.get("agent_id", "?")))
        entry = found.setdefault(key, {})
        entry["postgres_role"] = str(role)
        entry["schema"] = described.get("schema")
        entry["capability"] = described.get("grant")
    return [
        GrantRecord(
            agent_id=agent,
            namespace=namespace,
            schema=entry.get("schema"),
            redis_username=entry.get("redis_username"),
            postgres_role=entry.get("postgres_role"),
            capability=entry.get("capability"),
        )
        for (namespace, agent), entry in sorted(found.items())
    ]


# -- the `sagemem grants` command ------------------------------------------------------------


def _parse_tiers(text: str) -> set[int]:
    try:
        return {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--tiers {text!r} must be comma-separated tier indexes, e.g. 0,1,2"
        ) from None


def _parse_prefix(text: str) -> tuple[int, str]:
    tier, separator, prefix = text.partition("=")
    if not separator or not tier.strip().isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} must be TIER=PREFIX, e.g. 2=team: (an empty PREFIX means every key)"
        )
    return int(tier), prefix


def _prefix_map(pairs: list[tuple[int, str]] | None) -> dict[int, list[str]] | None:
    if not pairs:
        return None
    result: dict[int, list[str]] = {}
    for tier, prefix in pairs:
        result.setdefault(tier, []).append(prefix)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sagemem grants",
        description="Provision, revoke and list the Redis ACL users and Postgres roles that "
        "enforce agent capabilities. Administrator endpoints: --redis-url/--postgres-dsn, else "
        "SAGEMEM_REDIS_URL/SAGEMEM_POSTGRES_DSN, else the embedded servers.",
        epilog="exit status: 0 success; 2 a usage error or a failure (the reason is printed). "
        "`sagemem grants ACTION --help` describes an action.",
    )
    actions = parser.add_subparsers(dest="action", required=True)

    def endpoints(command: argparse.ArgumentParser) -> None:
        command.add_argument("--redis-url", default=None, help="administrator Redis URL")
        command.add_argument("--postgres-dsn", default=None, help="administrator Postgres DSN")

    def identity(command: argparse.ArgumentParser) -> None:
        command.add_argument("--agent", required=True, help="the agent id")
        command.add_argument("--namespace", required=True, help="the hierarchy's namespace")
        command.add_argument(
            "--schema", default="sagemem", help="the schema of the L3 and DRAM tables (sagemem)"
        )

    create = actions.add_parser(
        "create", help="create (or re-create) a grant; prints eval-able credential lines"
    )
    identity(create)
    create.add_argument(
        "--tiers", type=_parse_tiers, required=True, help="tier indexes, e.g. 0,1 or 0,1,2"
    )
    create.add_argument("--l3-read", action="store_true", help="allow reading L3")
    create.add_argument("--l3-write", action="store_true", help="allow writing L3")
    create.add_argument(
        "--read-prefix",
        type=_parse_prefix,
        action="append",
        metavar="TIER=PREFIX",
        help="limit reads at TIER to keys starting with PREFIX (repeatable)",
    )
    create.add_argument(
        "--write-prefix",
        type=_parse_prefix,
        action="append",
        metavar="TIER=PREFIX",
        help="limit writes at TIER to keys starting with PREFIX (repeatable)",
    )
    endpoints(create)
    revoke = actions.add_parser("revoke", help="delete a grant's Redis user and Postgres role")
    identity(revoke)
    endpoints(revoke)
    listing = actions.add_parser("list", help="list the provisioned grants")
    endpoints(listing)
    return parser


async def _run(args: argparse.Namespace) -> int:
    if args.action == "create":
        capability = AgentCapability(
            tiers=args.tiers,
            l3_read=args.l3_read,
            l3_write=args.l3_write,
            read_prefixes=_prefix_map(args.read_prefix),
            write_prefixes=_prefix_map(args.write_prefix),
        )
        credentials = await create_grant(
            capability,
            agent_id=args.agent,
            namespace=args.namespace,
            schema=args.schema,
            redis_url=args.redis_url,
            postgres_dsn=args.postgres_dsn,
        )
        print(f"{REDIS_URL_ENV}={shlex.quote(credentials.redis_url)}")
        print(f"{POSTGRES_DSN_ENV}={shlex.quote(credentials.postgres_dsn)}")
        print(f"export {REDIS_URL_ENV} {POSTGRES_DSN_ENV}")
        print(
            f"sagemem grants: {capability!r} for agent {credentials.agent_id!r}: Redis user "
            f"{credentials.redis_username!r}, Postgres role {credentials.postgres_role!r}; its "
            f"L2 space is namespace {credentials.l2_namespace!r}",
            file=sys.stderr,
        )
        return 0
    if args.action == "revoke":
        removed = await revoke_grant(
            agent_id=args.agent,
            namespace=args.namespace,
            schema=args.schema,
            redis_url=args.redis_url,
            postgres_dsn=args.postgres_dsn,
        )
        state = "revoked" if removed else "had no grant (nothing to revoke)"
        print(f"sagemem grants: agent {args.agent!r} in {args.namespace!r} {state}")
        return 0
    for record in await list_grants(redis_url=args.redis_url, postgres_dsn=args.postgres_dsn):
        print(
            f"{record.namespace}\t{record.agent_id}\tredis={record.redis_username or '-'}\t"
            f"postgres={record.postgres_role or '-'}\t{record.capability or '-'}"
        )
    return 0


def main(argv: Sequence[str]) -> int:
    """`sagemem grants create|revoke|list ...`; returns the exit status (2 on any error)."""
    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exit_:  # argparse printed the usage and the error already
        return 0 if exit_.code == 0 else 2
    try:
        return asyncio.run(_run(args))
    except SageMemError as error:
        print(f"sagemem grants {args.action}: error: {error}", file=sys.stderr)
        return 2
