"""The coherence bus's vocabulary: wire messages, their codec, and the events a subscriber sees.

Three messages travel on the bus (`spec.vocabulary.MessageKind`): `InvalidateMessage`
("version n of this key was committed; copies older than n are stale"), `RecallMessage`
("someone waits for the data you own: write it back and release") and, in a write-update
namespace, `UpdateMessage` ("version n of this key was committed with this value"). The first
two never carry a value: a receiver that acts on one at worst drops a copy and refetches it
from the home, so a forged or replayed one can cost a refetch but can never put data into a
cache. An update does carry the value: its receiver caches it (if newer than its copy), so
write-update trusts whoever may publish updates of a key (`sagemem.grants`: the agents allowed
to write it) as much as the home trusts their writes; a namespace with writers it does not
trust that far keeps the default, invalidation.

The wire format (see docs/decisions/0003-bus-wire-format.md) is one compact JSON object of
UTF-8 text with a format version `fmt`, the kind, the namespace, the key, the sender's agent
id, a version (invalidate) or an optional owner epoch (recall), and last the per-channel
sequence number `seq` that the bus's publish script stamps on it. `decode` accepts exactly that
and raises `MalformedMessage` for anything else, checking the size before parsing.

This module must never do I/O or import a driver: the sans-IO core and its tests use it too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final, NoReturn

from sagemem import keyspace
from sagemem.errors import ConfigurationError, InvalidKeyError, SageMemError
from sagemem.spec.vocabulary import MessageKind
from sagemem.values import NAMESPACE_PATTERN, check_key

__all__ = [
    "AGENT_ID_PATTERN",
    "CHANNEL_PREFIX",
    "FORMAT_VERSION",
    "INTEGER_MAX",
    "LUA_SEQUENCED",
    "MESSAGE_SIZE_MAX_BYTES",
    "PUBSUB_CHOICES",
    "UPDATE_VALUE_MAX_BYTES",
    "BusEvent",
    "BusHandler",
    "Delivered",
    "InvalidateMessage",
    "MalformedMessage",
    "Message",
    "Missed",
    "MissedReason",
    "RecallMessage",
    "Resynced",
    "UpdateMessage",
    "channel_key",
    "channel_name",
    "channel_suffix",
    "check_agent_id",
    "check_pubsub",
    "decode",
    "encode",
    "encode_unsequenced",
    "subscription_pattern",
    "uses_sharded_pubsub",
]

FORMAT_VERSION: Final = 1
# The largest valid message is about 2.4 KB (a 512-character key of 4-byte characters is 2 KB);
# anything longer is refused before it is parsed, so a hostile payload costs a length check.
MESSAGE_SIZE_MAX_BYTES: Final = 4096
# An update also carries its value's JSON text, at most this long (the largest a namespace may
# choose for `update_value_max_bytes`); an update message may be that much longer.
UPDATE_VALUE_MAX_BYTES: Final = 65536
# Versions are Postgres bigints and sequence numbers Redis INCR counters: both signed 64-bit.
INTEGER_MAX: Final = (1 << 63) - 1
# Agent ids name pub/sub channels and Redis keys: no ':' or '|' (so one id is never a prefix
# of another's channel, and a channel's '|' are its separators), no glob characters, no spaces.
AGENT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.\-]{1,128}")

_INVALIDATE_FIELDS: Final = frozenset({"fmt", "kind", "ns", "key", "version", "sender", "seq"})
_RECALL_FIELDS: Final = frozenset({"fmt", "kind", "ns", "key", "sender", "seq"})
_RECALL_OPTIONAL_FIELDS: Final = frozenset({"owner_epoch"})
_UPDATE_FIELDS: Final = frozenset({"fmt", "kind", "ns", "key", "version", "value", "sender", "seq"})


class MalformedMessage(SageMemError, ValueError):
    """Bytes received on the bus (or fields given to a message) are not a valid message."""


def check_agent_id(agent_id: object) -> str:
    """Return `agent_id` if it matches `AGENT_ID_PATTERN`, else raise `ConfigurationError`."""
    if type(agent_id) is str and AGENT_ID_PATTERN.fullmatch(agent_id):
        return agent_id
    raise ConfigurationError(
        f"agent id {agent_id!r:.80} is invalid: use 1 to 128 characters from letters, digits, "
        "'_', '.' and '-' (it names a pub/sub channel)"
    )


# -- channel names -------------------------------------------------------------------------
#
# A message to agent `a` about `key` travels on `sagemem-bus:<ns>:<a>|<tag>|<channel_key(key)>`
# (tag `i` for an invalidation, `r` for a recall, `u` for an update); agent `a` receives all of
# them through ONE pattern subscription, `sagemem-bus:<ns>:<a>|*`. The key is in the channel
# name so that Redis ACL channel rules can confine who publishes what (`sagemem.grants`):
# `&sagemem-bus:<ns>:*|i|P*` lets a user publish invalidations of the keys starting with P and
# nothing else. For that
# rule to mean exactly "keys starting with P", a channel holds exactly two '|': agent ids and
# namespaces have none, and `channel_key` writes '|' (and '%', to stay reversible) as `%7C` and
# `%25`. That encoding maps characters one by one to a prefix-free code, so
# `channel_key(p)` is a prefix of `channel_key(k)` exactly when `p` is a prefix of `k`.

CHANNEL_PREFIX: Final = keyspace.BUS_PREFIX
_KIND_TAGS: Final = {MessageKind.INVALIDATE: "i", MessageKind.RECALL: "r", MessageKind.UPDATE: "u"}


def channel_key(key: str) -> str:
    """`key` as written in a bus channel name: '%' as `%25` and '|' as `%7C`, the rest as is."""
    if "%" in key or "|" in key:
        return key.replace("%", "%25").replace("|", "%7C")
    return key


def channel_suffix(kind: MessageKind, key: str) -> str:
    """The part of a channel name after the agent id: `|<tag>|<channel_key(key)>`."""
    return f"|{_KIND_TAGS[kind]}|{channel_key(key)}"


def channel_name(namespace: str, agent_id: str, kind: MessageKind, key: str) -> str:
    """The channel on which `agent_id` receives messages of `kind` about `key`."""
    return f"{keyspace.bus_prefix(namespace)}{agent_id}{channel_suffix(kind, key)}"


PUBSUB_CHOICES: Final = ("auto", "classic", "sharded")
"""The pub/sub flavours a namespace's bus (and its directory's relay) may use."""


def check_pubsub(owner: str, pubsub: object) -> str:
    """`pubsub` if it is one of `PUBSUB_CHOICES`, else a `ConfigurationError` naming `owner`."""
    if type(pubsub) is not str or pubsub not in PUBSUB_CHOICES:
        raise ConfigurationError(
            f"{owner} pubsub must be one of {', '.join(map(repr, PUBSUB_CHOICES))}, got "
            f"{pubsub!r:.80}; 'auto' uses sharded pub/sub on a cluster, classic on one server"
        )
    return pubsub


def uses_sharded_pubsub(pubsub: str, *, on_cluster: bool) -> bool:
    """Whether a `pubsub` choice means SPUBLISH/SSUBSCRIBE: "sharded", or "auto" on a cluster
    (where a classic message is forwarded to every node)."""
    return pubsub == "sharded" or (pubsub == "auto" and on_cluster)


def subscription_pattern(namespace: str, agent_id: str) -> str:
    """The pattern through which `agent_id` receives all its messages (one PSUBSCRIBE)."""
    return f"{keyspace.bus_prefix(namespace)}{agent_id}|*"


def _check_integer(name: str, value: object) -> int:
    # bool is an int subclass: `True` must not pass for version 1.
    if type(value) is not int:
        raise MalformedMessage(
            f"message field {name!r} must be an integer, got {type(value).__name__}: {value!r:.80}"
        )
    if not 0 <= value <= INTEGER_MAX:
        raise MalformedMessage(
            f"message field {name!r} must be between 0 and 2**63-1, got {value!r:.80}"
        )
    return value


def _check_common(namespace: object, key: object, sender: object, seq: object) -> None:
    if type(namespace) is not str or not NAMESPACE_PATTERN.fullmatch(namespace):
        raise MalformedMessage(
            f"message namespace {namespace!r:.80} is invalid: use 1 to 64 characters from "
            "letters, digits, '_', '.' and '-'"
        )
    try:
        check_key(key)
    except InvalidKeyError as error:
        raise MalformedMessage(f"message key is invalid: {error}") from None
    try:
        check_agent_id(sender)
    except ConfigurationError as error:
        raise MalformedMessage(f"message sender is invalid: {error}") from None
    _check_integer("seq", seq)


@dataclass(frozen=True, slots=True)
class InvalidateMessage:
    """Version `version` of `key` was committed: copies older than it are stale.

    `seq` is the per-channel sequence number stamped by the bus when it publishes (0 until then).
    """

    namespace: str
    key: str
    version: int
    sender: str
    seq: int = 0

    kind: ClassVar[MessageKind] = MessageKind.INVALIDATE

    def __post_init__(self) -> None:
        _check_common(self.namespace, self.key, self.sender, self.seq)
        _check_integer("version", self.version)


@dataclass(frozen=True, slots=True)
class RecallMessage:
    """Someone waits for the data the receiver owns: write it back and release ownership.

    `owner_epoch`, when given, is the ownership grant the sender saw at the home; an owner whose
    grant is newer can tell the recall is about an earlier ownership. `seq` as for invalidations.
    """

    namespace: str
    key: str
    sender: str
    owner_epoch: int | None = None
    seq: int = 0

    kind: ClassVar[MessageKind] = MessageKind.RECALL

    def __post_init__(self) -> None:
        _check_common(self.namespace, self.key, self.sender, self.seq)
        if self.owner_epoch is not None:
            _check_integer("owner_epoch", self.owner_epoch)


@dataclass(frozen=True, slots=True)
class UpdateMessage:
    """Write-update: version `version` of `key` was committed with value `value` (a JSON value).

    A holder whose copy is older moves to it; to anyone else it is an invalidation. `seq` as
    for invalidations.
    """

    namespace: str
    key: str
    version: int
    value: object
    sender: str
    seq: int = 0

    kind: ClassVar[MessageKind] = MessageKind.UPDATE

    def __post_init__(self) -> None:
        _check_common(self.namespace, self.key, self.sender, self.seq)
        _check_integer("version", self.version)


type Message = InvalidateMessage | RecallMessage | UpdateMessage


# -- codec ------------------------------------------------------------------------------------


def _dumps(text: str) -> str:
    # Validated keys, namespaces and agent ids hold no control character, so only '"' and '\\'
    # need escaping; the common case skips the JSON encoder.
    if '"' in text or "\\" in text:
        return json.dumps(text, ensure_ascii=False)
    return f'"{text}"'


def encode_unsequenced(message: Message) -> bytes:
    """The message's wire form up to its sequence number: append the decimal seq and `}`.

    This is what the bus hands its publish script, which stamps each target's own sequence
    number; `encode(m) == encode_unsequenced(m) + str(m.seq).encode() + b"}"`.
    """
    head = (
        f'{{"fmt":{FORMAT_VERSION},"kind":"{message.kind.value}",'
        f'"ns":{_dumps(message.namespace)},"key":{_dumps(message.key)},'
    )
    if isinstance(message, InvalidateMessage):
        body = f'"version":{message.version},"sender":{_dumps(message.sender)},'
    elif isinstance(message, UpdateMessage):
        try:
            value = json.dumps(
                message.value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            )
        except (TypeError, ValueError) as error:
            raise MalformedMessage(
                f"an update's value must be a JSON value (no NaN or infinity): {error}"
            ) from None
        body = f'"version":{message.version},"value":{value},"sender":{_dumps(message.sender)},'
    else:
        epoch = "" if message.owner_epoch is None else f'"owner_epoch":{message.owner_epoch},'
        body = f'"sender":{_dumps(message.sender)},{epoch}'
    return f'{head}{body}"seq":'.encode()


_SEQUENCE_TAIL: Final = "}"  # what follows the sequence number: the end of the JSON object

LUA_SEQUENCED: Final = (
    "local function sequenced(head, seq)\n"
    f"  return head .. string.format('%d', seq) .. '{_SEQUENCE_TAIL}'\n"
    "end\n"
)
"""Lua source of `sequenced(head, seq)`: a message's wire form from `encode_unsequenced` and a
target's sequence number, for the scripts that stamp it (the bus's publish, the relay), so the
wire format is written here only."""


def encode(message: Message) -> bytes:
    """The message's complete wire form (compact JSON, UTF-8), including its `seq`."""
    return encode_unsequenced(message) + f"{message.seq}{_SEQUENCE_TAIL}".encode()


def _reject_constant(name: str) -> NoReturn:
    raise MalformedMessage(f"message contains the non-JSON number {name}")


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        names = [name for name, _ in pairs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise MalformedMessage(f"message repeats the fields {repeated!r:.80}")
    return result


# Built once: json.loads with hooks would build a decoder per call (three times slower).
_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_unique_object, parse_constant=_reject_constant
)


def decode(raw: bytes) -> Message:
    """Parse one message received on the bus, or raise `MalformedMessage` saying what is wrong.

    Nothing but `MalformedMessage` ever escapes, whatever the bytes are.
    """
    if type(raw) is not bytes:
        raise MalformedMessage(f"message must be bytes, got {type(raw).__name__}")
    if len(raw) > MESSAGE_SIZE_MAX_BYTES + UPDATE_VALUE_MAX_BYTES:
        raise MalformedMessage(
            f"message is {len(raw)} bytes long, over the limit of "
            f"{MESSAGE_SIZE_MAX_BYTES + UPDATE_VALUE_MAX_BYTES}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MalformedMessage(f"message is not UTF-8 text: {error}") from None
    try:
        document: object = _DECODER.decode(text)
    except MalformedMessage:
        raise
    except (ValueError, RecursionError) as error:  # JSONDecodeError, int too long, too deep
        raise MalformedMessage(f"message is not JSON: {error}"[:300]) from None
    if type(document) is not dict:
        raise MalformedMessage(
            f"message must be a JSON object, got a JSON {type(document).__name__}"
        )
    fmt = document.get("fmt")
    if type(fmt) is not int or fmt != FORMAT_VERSION:
        raise MalformedMessage(
            f"message format {fmt!r:.40} is not supported: this sagemem reads format "
            f"{FORMAT_VERSION} (upgrade every process on the bus to the same sagemem)"
        )
    kind = document.get("kind")
    fields = frozenset(document)
    if kind == MessageKind.UPDATE.value:
        _check_fields(fields, _UPDATE_FIELDS, frozenset(), str(kind))
        return UpdateMessage(
            namespace=document["ns"],
            key=document["key"],
            version=document["version"],
            value=document["value"],
            sender=document["sender"],
            seq=document["seq"],
        )
    if len(raw) > MESSAGE_SIZE_MAX_BYTES:
        raise MalformedMessage(
            f"{kind!s:.40} message is {len(raw)} bytes long, over the limit of "
            f"{MESSAGE_SIZE_MAX_BYTES} (only an update may carry a value)"
        )
    if kind == MessageKind.INVALIDATE.value:
        _check_fields(fields, _INVALIDATE_FIELDS, frozenset(), str(kind))
        return InvalidateMessage(
            namespace=document["ns"],
            key=document["key"],
            version=document["version"],
            sender=document["sender"],
            seq=document["seq"],
        )
    if kind == MessageKind.RECALL.value:
        _check_fields(fields, _RECALL_FIELDS, _RECALL_OPTIONAL_FIELDS, str(kind))
        epoch = document.get("owner_epoch")
        if "owner_epoch" in document:
            _check_integer("owner_epoch", epoch)  # present means an integer, never null
        return RecallMessage(
            namespace=document["ns"],
            key=document["key"],
            sender=document["sender"],
            owner_epoch=epoch,
            seq=document["seq"],
        )
    raise MalformedMessage(
        f"message kind {kind!r:.40} is unknown: expected one of "
        f"{sorted(member.value for member in MessageKind)}"
    )


def _check_fields(
    fields: frozenset[str], required: frozenset[str], optional: frozenset[str], kind: str
) -> None:
    missing = required - fields
    extra = fields - required - optional
    if missing or extra:
        raise MalformedMessage(
            f"{kind} message has missing fields {sorted(missing)} and unexpected fields "
            f"{sorted(extra)[:8]}; expected exactly {sorted(required)}"
            + (f" (optionally {sorted(optional)})" if optional else "")
        )


# -- events handed to a subscriber ------------------------------------------------------------


class MissedReason(StrEnum):
    """Why the bus told a subscriber that messages may have been lost."""

    DISCONNECTED = "disconnected"  # the pub/sub connection failed or was closed by the server
    HEALTH_CHECK_FAILED = "health_check_failed"  # no answer to a PING: a silently dead link
    SEQUENCE_GAP = "sequence_gap"  # the channel's sequence numbers skipped or went backwards
    OVERFLOW = "overflow"  # more messages arrived during a resubscription than it can hold


@dataclass(frozen=True, slots=True)
class Delivered:
    """A well-formed message arrived on the subscriber's channel (the spec's DELIVER_* events)."""

    message: Message


@dataclass(frozen=True, slots=True)
class Missed:
    """Messages to this subscriber may have been lost (the spec's MARK_MISSED effect).

    Until the `Resynced` that follows, the subscriber must not serve a read from a copy that a
    lost invalidation could concern.
    """

    reason: MissedReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Resynced:
    """The subscription is re-established after a `Missed` (the spec's RESYNC event).

    Every message published from now on is delivered or reported missed; entries cached before
    must be dropped or revalidated by version before they serve a read.
    """


type BusEvent = Delivered | Missed | Resynced
type BusHandler = Callable[[BusEvent], Awaitable[None]]
