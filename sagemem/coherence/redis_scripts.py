"""The Redis half of the coherence protocol as server-side Lua scripts, and their loader.

Each script is ONE atomic step of `sagemem.spec` (see `spec.vocabulary.Effect`: "the HOME_*,
L2_* and DIRECTORY_* effects of a server step are the body of one atomic script"). The
meaning every script implements is the one `spec/model.py` gives the effect it names:

- `FILL_SCRIPT`: the Redis half of FILL_FETCH: DIRECTORY_ADD_HOLDER, then L2_READ on a hit or
  L2_TAKE_LEASE on a miss (one lease per key: a new lease replaces, so voids, the older one).
  In strict mode a miss while an acknowledgement is still owed (FETCH_UNSETTLED) does nothing.
- `LEASED_FILL_SCRIPT`: L2_LEASED_FILL: store the copy only if the caller's lease is still the
  key's lease, and consume the lease.
- `INVALIDATE_SCRIPT`: the Redis half of OUTBOX_RELAY, executing the effects the row names, in
  its order: L2_DELETE (the copy and the lease), L2_SET_IF_NEWER (write-update: the committed
  value becomes L2's copy, unless a newer version of the key was relayed first: every relay
  raises the key's highest relayed version), PUBLISH_INVALIDATIONS (one message per holder
  except the sender, who are then forgotten) or PUBLISH_INVALIDATIONS_AWAIT_ACKS (also record
  an owed ack per holder), or PUBLISH_UPDATES (write-update: the message, an update carrying
  the value, goes to every holder except the sender, who all stay holders); it replies with the
  effects it performed, then the agents messaged.
- `EXPIRE_HOLDER_SCRIPT`: HOLDER_EXPIRE / DIRECTORY_EXPIRE_HOLDER for one agent, only once its
  read lease (the registration's deadline) has passed.
- `EXPIRE_LAPSED_SCRIPT`: HOLDER_EXPIRE for every lapsed holder and owed ack of a key.
- `LIVE_MEMBERS_SCRIPT`: read-only: the members of a holders/acks set whose deadline is ahead.
- `SETTLE_FACTS_SCRIPT`: read-only but for the birth key: the holders that still owe an ack for
  a key, and how long ago the namespace's directory was born on the server that serves it (its
  birth key is set on first use after each server start, and again when a cluster failover
  moved the namespace to another node: either may have forgotten registrations).

Time is the Redis server's clock (`TIME`), never a client's, so every deadline in the
directory is compared with one clock. Holder and ack sets are sorted sets scored by the
registration's deadline in milliseconds; every key the scripts create carries an expiry.

The invalidation script publishes exactly what `CoherenceBus.publish_invalidate` publishes:
on channel `sagemem-bus:{<namespace>}:<agent>|i|<key>` the message `encode_unsequenced(message)`
followed by the target's next sequence number (INCR of `sagemem-bus:{<namespace>}:<agent>:seq`)
and `}`. The holder set names the agents, so those keys are built inside the script: every
key of a namespace carries the namespace as its hash tag (`sagemem.keyspace`), so on a cluster
the script's keys all live in the slot of the node it runs on.

`register_directory_scripts(client)` wraps each source in redis-py's `register_script`: every
call is an EVALSHA that falls back to SCRIPT LOAD and retries once on NOSCRIPT (a restarted or
flushed server). This module must never run a command at import or registration time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from sagemem.coherence.messages import LUA_SEQUENCED

__all__ = [
    "ADD_HOLDER_SCRIPT",
    "EXPIRE_HOLDER_SCRIPT",
    "EXPIRE_LAPSED_SCRIPT",
    "FILL_L2_HIT",
    "FILL_LEASED",
    "FILL_SCRIPT",
    "FILL_UNSETTLED",
    "INVALIDATE_SCRIPT",
    "LEASED_FILL_APPLIED",
    "LEASED_FILL_LEASE_VOID",
    "LEASED_FILL_OCCUPIED",
    "LEASED_FILL_SCRIPT",
    "LIVE_MEMBERS_SCRIPT",
    "SETTLE_FACTS_SCRIPT",
    "DirectoryScripts",
    "register_directory_scripts",
]

# Shared Lua helpers, prepended to the scripts that need them. `now_ms` is the server's clock;
# `expire_at_newest` makes a sorted set live exactly as long as its latest deadline.
_PRELUDE: Final = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ms(n)
  return string.format('%d', n)
end
-- How long ago (ms) the directory was born on the server running the script: its birth key
-- (a hash: the server, its clock when born) is set when missing (a server started without the
-- data) or naming another server (on a cluster, `CLUSTER MYID`, which a failover changes: the
-- promoted replica may lack the last registrations). On a cluster the birth is the
-- namespace's (`namespace_key`, declared: in the script's slot); a single server answers
-- CLUSTER MYID with an error, and keeps one birth for every namespace (`server_key`, passed as
-- an argument: a single server runs scripts that touch undeclared keys).
local function directory_age(namespace_key, server_key, now)
  local server = redis.pcall('CLUSTER', 'MYID')
  local birth_key = namespace_key
  if type(server) ~= 'string' then
    -- 'cluster support disabled': one server. Any other error (a grant made before
    -- `+cluster|myid` was in the rules) keeps the namespace's key with an unknown server.
    if string.find(tostring(server.err), 'disabled', 1, true) then
      birth_key = server_key
      server = '-'
    else
      server = '?'
    end
  end
  local born = redis.call('HMGET', birth_key, 'server', 'ms')
  local born_ms = tonumber(born[2])
  if born[1] ~= server or not born_ms then
    born_ms = now
    redis.call('HSET', birth_key, 'server', server, 'ms', string.format('%d', now))
  end
  return now - born_ms
end
local function expire_at_newest(key)
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if newest[2] then
    redis.call('PEXPIREAT', key, newest[2])
  end
end
"""

FILL_L2_HIT: Final = 1
"""`FILL_SCRIPT` reply kind: L2 held a copy (spec guard FETCH_L2_HIT); the payload is it."""
FILL_LEASED: Final = 2
"""`FILL_SCRIPT` reply kind: L2 missed and a fill lease was handed out; the payload is its token."""
FILL_UNSETTLED: Final = 3
"""`FILL_SCRIPT` reply kind (strict): L2 missed while acks are owed, or the directory is too
young to list every holder still serving a copy: nothing was done."""

# KEYS[1] the key's fill lease, KEYS[2] holders, KEYS[3] owed acks, KEYS[4] the namespace's
# directory birth key, ARGV[14] the server's (see SETTLE_FACTS_SCRIPT).
# ARGV[1] agent, ARGV[2] a fresh random lease token, ARGV[3] lease ttl ms, ARGV[4] holder
# ttl ms, ARGV[5] holders max, ARGV[6] '1' in strict mode, ARGV[7] the L2 copy's key, ARGV[8]
# and ARGV[9] '1' if the FILL_FETCH row of an L2 hit / of a miss has DIRECTORY_ADD_HOLDER (the
# script performs what the entry's rows say), ARGV[10] '1' if the table's HOLDER_EXPIRE row
# expires lapsed holders (DIRECTORY_EXPIRE_HOLDER: the script may perform it first), ARGV[11]
# '1' if the L2-hit row has L2_READ (else the copy is not returned), ARGV[12] '1' if the miss
# row has L2_TAKE_LEASE (else no lease is handed out; the script acts before the home says
# whether an owner holds the key, so a lease the owned branch does not use simply expires, as
# L2_ABANDON_LEASE does). ARGV[13] (strict) the age in ms the directory must have reached
# (else FETCH_UNSETTLED, nothing done: a young directory may have forgotten registrations of
# holders that still serve their copies, as a strict settle waits too); '0' checks nothing.
# The copy
# is only read here, so it is not declared: Redis checks declared keys for reading AND
# writing, and an agent whose grant lets it read a key but not write it (sagemem.grants) may
# read the copy, never write it.
# Reply {kind, registered (1 added, 0 refused: the set is full, 2 not asked by the row),
# payload (copy or token, '' when none: not asked by the row), acks still owed}.
FILL_SCRIPT: Final = (
    _PRELUDE
    + """
local agent = ARGV[1]
local COPY = ARGV[7]
local now = now_ms()
if ARGV[6] == '1' and ARGV[13] ~= '0' then
  if directory_age(KEYS[4], ARGV[14], now) < tonumber(ARGV[13]) then
    return {3, 0, '', 0}
  end
end
local copy = redis.call('GET', COPY)
-- A copy without a version (a plain hierarchy's write) or in a foreign format is no copy of
-- the protocol's: a miss, so the fill reads the home (the leased fill then leaves it alone).
if copy and not string.find(copy, '^%d+;') then
  copy = false
end
local owed = 0
if not copy then
  -- Strict FETCH_UNSETTLED: while a holder still owes an ack the fill waits, with no effect.
  -- Lapsed acks are expired first where the table has HOLDER_EXPIRE (a timer that may fire at
  -- any time).
  if ARGV[10] == '1' then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ms(now))
  end
  owed = redis.call('ZCARD', KEYS[3])
  if ARGV[6] == '1' and owed > 0 then
    return {3, 0, '', owed}
  end
end
-- DIRECTORY_ADD_HOLDER, refused (registered = 0) when the set is full of live holders: the
-- caller may return the data once but must not cache it. Lapsed registrations make room only
-- where the table has HOLDER_EXPIRE.
if ARGV[10] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms(now))
end
local registered = 2
if (copy and ARGV[8] == '1') or (not copy and ARGV[9] == '1') then
  registered = 0
  if redis.call('ZSCORE', KEYS[2], agent) or redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[5]) then
    redis.call('ZADD', KEYS[2], ms(now + tonumber(ARGV[4])), agent)
    expire_at_newest(KEYS[2])
    registered = 1
  end
end
if copy then
  -- L2_READ, where the row has it
  if ARGV[11] ~= '1' then
    copy = ''
  end
  return {1, registered, copy, owed}
end
if ARGV[12] ~= '1' then
  return {2, registered, '', owed}
end
-- L2_TAKE_LEASE: the key has one lease; handing out a new one voids the older one.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'token', ARGV[2], 'agent', agent)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {2, registered, ARGV[2], owed}
"""
)

LEASED_FILL_APPLIED: Final = 1
"""`LEASED_FILL_SCRIPT` reply: the lease was valid and the copy is stored."""
LEASED_FILL_LEASE_VOID: Final = 0
"""`LEASED_FILL_SCRIPT` reply: the lease was voided (delete, newer lease, expiry) or used."""
LEASED_FILL_OCCUPIED: Final = 2
"""`LEASED_FILL_SCRIPT` reply: the lease was valid (now consumed) but L2 already holds a copy
written outside the protocol; it is left alone rather than overwritten by a maybe older one."""

# Store an L2 copy, with the L2 ttl in ms ('0': none). Prepended to the scripts that store one.
_SET_COPY: Final = """
local function set_copy(key, entry, ttl_ms)
  if ttl_ms == '0' then
    redis.call('SET', key, entry)
  else
    redis.call('SET', key, entry, 'PX', ttl_ms)
  end
end
"""

# KEYS[1] the L2 copy, KEYS[2] the key's fill lease.
# ARGV[1] agent, ARGV[2] lease token, ARGV[3] the L2 entry ('<version>;<json>'), ARGV[4] L2
# ttl ms ('0': none).
LEASED_FILL_SCRIPT: Final = (
    _SET_COPY
    + """
local lease = redis.call('HMGET', KEYS[2], 'token', 'agent')
if lease[1] ~= ARGV[2] or lease[2] ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 2
end
set_copy(KEYS[1], ARGV[3], ARGV[4])
return 1
"""
)

# KEYS[1] the L2 copy, KEYS[2] the key's fill lease, KEYS[3] holders, KEYS[4] owed acks.
# ARGV[1] the bus's channel prefix 'sagemem-bus:<namespace>:', ARGV[2] the invalidation's wire
# form up to its sequence number, ARGV[3] the sender (not messaged), ARGV[4] '1' if the table's
# HOLDER_EXPIRE row expires lapsed holders (DIRECTORY_EXPIRE_HOLDER): lapsed holders are then
# dropped unmessaged and owed acks lapse with their holders' read leases; else registrations
# stay and owed acks are kept until acknowledged or explicitly expired, for at most ARGV[5] ms,
# ARGV[5] the sequence counters' ttl ms, ARGV[6] the channel suffix '|i|<key>'
# (`messages.channel_suffix`): holder h's channel is ARGV[1] .. h .. ARGV[6], its counter
# ARGV[1] .. h .. ':seq'; ARGV[7] the effects to perform (letters, see below); ARGV[8] the
# version relayed; ARGV[9] the L2 entry '<version>;<json>' of L2_SET_IF_NEWER ('' without it);
# ARGV[10] the L2 ttl ms ('0': none); ARGV[11] the ttl ms of KEYS[5], the highest version of
# the key any relay has relayed (every relay raises it first); ARGV[12] the publishing command
# of the namespace's bus, PUBLISH or SPUBLISH (sharded pub/sub).
# Reply: the effects performed (letters), then the agents messaged.
INVALIDATE_SCRIPT: Final = (
    _PRELUDE
    + _SET_COPY
    + LUA_SEQUENCED
    + """
-- A restricted caller may publish invalidations only of the keys it may write (its ACL): check
-- before changing anything, since a command refused half-way would not undo the earlier ones.
-- (redis.acl_check_cmd exists from Redis 7.0 on; older servers have no channel ACLs anyway.)
local publish = ARGV[12]
if publish ~= 'PUBLISH' and publish ~= 'SPUBLISH' then
  return redis.error_reply('ERR the publishing command must be PUBLISH or SPUBLISH')
end
local probe = ARGV[1] .. ARGV[3] .. ARGV[6]
if redis.acl_check_cmd and not redis.acl_check_cmd(publish, probe, '') then
  return redis.error_reply('NOPERM this user may not publish invalidations of this key')
end
local now = now_ms()
-- The highest version relayed so far: a relay of an older version than one already relayed
-- (its writer's own relay, run late) must not store its value in L2.
local version = tonumber(ARGV[8])
local highest = tonumber(redis.call('GET', KEYS[5]) or '-1')
local newest = version >= highest
if version > highest then
  redis.call('SET', KEYS[5], ARGV[8], 'PX', ARGV[11])
end
-- ARGV[7]: the effects to perform, in the row's order, as letters: D L2_DELETE, S
-- L2_SET_IF_NEWER, P PUBLISH_INVALIDATIONS, A PUBLISH_INVALIDATIONS_AWAIT_ACKS, U
-- PUBLISH_UPDATES (ARGV[2] and ARGV[6] are then an update's message and channel suffix). The
-- reply's first element names the effects performed, in order; the agents messaged follow.
local performed = ''
local sent = {}
for step = 1, #ARGV[7] do
  local effect = string.sub(ARGV[7], step, step)
  if effect == 'D' then
    -- L2_DELETE: the copy goes, and with the key's lease every fill lease handed out is void.
    redis.call('DEL', KEYS[1], KEYS[2])
    performed = performed .. 'D'
  elseif effect == 'S' then
    -- L2_SET_IF_NEWER: L2 holds the committed version unless a newer one was relayed first.
    if ARGV[9] == '' then
      return redis.error_reply('ERR L2_SET_IF_NEWER needs the L2 entry')
    end
    if newest then
      set_copy(KEYS[1], ARGV[9], ARGV[10])
    end
    performed = performed .. 'S'
  elseif effect == 'P' or effect == 'A' or effect == 'U' then
    local await_acks = effect == 'A'
    local forget = effect ~= 'U'  -- an update's holders stay holders: the next relay reaches them
    -- Lapsed holders have dropped their copies by their own clock: they need no message
    -- (HOLDER_EXPIRE first, where the table has it; ARGV[4]).
    if ARGV[4] == '1' then
      redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ms(now))
    end
    local entries = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      local agent = entries[i]
      if agent ~= ARGV[3] then
        local counter = ARGV[1] .. agent .. ':seq'
        local seq = redis.call('INCR', counter)
        redis.call('PEXPIRE', counter, ARGV[5])
        redis.call(publish, ARGV[1] .. agent .. ARGV[6],
          sequenced(ARGV[2], seq))
        if forget then
          redis.call('ZREM', KEYS[3], agent)
        end
        if await_acks then
          -- The ack is owed until the holder's read lease (its registration's deadline) lapses.
          redis.call('ZADD', KEYS[4], 'GT', entries[i + 1], agent)
        end
        sent[#sent + 1] = agent
      end
    end
    if await_acks and #sent > 0 then
      if ARGV[4] == '1' then
        -- HOLDER_EXPIRE by the server: the owed acks lapse with their holders' read leases
        expire_at_newest(KEYS[4])
      else
        redis.call('PEXPIRE', KEYS[4], ARGV[5])
      end
    end
    performed = performed .. effect
  else
    return redis.error_reply('ERR unknown relay effect ' .. effect)
  end
end
table.insert(sent, 1, performed)
return sent
"""
)

# DIRECTORY_ADD_HOLDER on its own (a recalled owner keeps a Shared copy: it must be a holder).
# KEYS[1] holders; ARGV[1] agent, ARGV[2] holder ttl ms, ARGV[3] holders max, ARGV[4] '1' if
# the table's HOLDER_EXPIRE row expires lapsed holders (they then make room first). Reply 1 if
# registered, 0 if the set was full.
ADD_HOLDER_SCRIPT: Final = (
    _PRELUDE
    + """
local now = now_ms()
if ARGV[4] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms(now))
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ms(now + tonumber(ARGV[2])), ARGV[1])
  expire_at_newest(KEYS[1])
  return 1
end
return 0
"""
)

# KEYS[1] holders, KEYS[2] owed acks. ARGV[1] agent.
# Reply 1 if a lapsed owed ack or lapsed registration of the agent was dropped, else 0.
EXPIRE_HOLDER_SCRIPT: Final = (
    _PRELUDE
    + """
local now = now_ms()
local expired = 0
local owed = redis.call('ZSCORE', KEYS[2], ARGV[1])
if owed and tonumber(owed) <= now then
  redis.call('ZREM', KEYS[2], ARGV[1])
  expired = 1
end
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if held and tonumber(held) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  expired = 1
end
return expired
"""
)

# KEYS[1] holders, KEYS[2] owed acks. Reply: the agents whose owed ack was expired.
EXPIRE_LAPSED_SCRIPT: Final = (
    _PRELUDE
    + """
local now = ms(now_ms())
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return lapsed
"""
)

# KEYS[1] a holders or owed-acks set. Reply: its members whose deadline is still ahead.
LIVE_MEMBERS_SCRIPT: Final = (
    _PRELUDE
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ms(now_ms()), '+inf')
"""
)

# KEYS[1] a key's owed acks, KEYS[2] the namespace's directory birth key, ARGV[1] the server's
# (a hash: the server that serves the directory and when it first did, server clock in ms;
# the namespace's is used on a cluster, the server's on one server: `directory_age`). The
# directory is born again when the key is missing (a server
# started without the data: everything in Redis is new) or names another server: on a
# cluster, `CLUSTER MYID` of the node running the script, which changes when a failover
# promotes a replica that may lack the last registrations its primary took (a single server
# answers an error there and counts as '-'). What a strict
# write's settling asks, in one round trip. Reply {milliseconds since the directory was born,
# every agent that owes an ack, lapsed or not: lapsed ones are dropped only by HOLDER_EXPIRE
# (`EXPIRE_LAPSED_SCRIPT`)}.
SETTLE_FACTS_SCRIPT: Final = (
    _PRELUDE
    + """
local now = now_ms()
return {directory_age(KEYS[2], ARGV[1], now), redis.call('ZRANGE', KEYS[1], 0, -1)}
"""
)


@dataclass(frozen=True, slots=True)
class DirectoryScripts:
    """The directory's scripts registered on one client (EVALSHA, SCRIPT LOAD on NOSCRIPT)."""

    fill: AsyncScript
    add_holder: AsyncScript
    leased_fill: AsyncScript
    invalidate: AsyncScript
    expire_holder: AsyncScript
    expire_lapsed: AsyncScript
    live_members: AsyncScript
    settle_facts: AsyncScript


def register_directory_scripts(client: aioredis.Redis) -> DirectoryScripts:
    """Wrap every directory script for `client`; no command is sent until a script is called."""
    return DirectoryScripts(
        fill=client.register_script(FILL_SCRIPT),
        add_holder=client.register_script(ADD_HOLDER_SCRIPT),
        leased_fill=client.register_script(LEASED_FILL_SCRIPT),
        invalidate=client.register_script(INVALIDATE_SCRIPT),
        expire_holder=client.register_script(EXPIRE_HOLDER_SCRIPT),
        expire_lapsed=client.register_script(EXPIRE_LAPSED_SCRIPT),
        live_members=client.register_script(LIVE_MEMBERS_SCRIPT),
        settle_facts=client.register_script(SETTLE_FACTS_SCRIPT),
    )
