"""The bus's wire format: exact round trips, and nothing but `MalformedMessage` for bad bytes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sagemem.coherence
from sagemem.coherence import bus, redis_scripts
from sagemem.coherence.messages import (
    FORMAT_VERSION,
    INTEGER_MAX,
    LUA_SEQUENCED,
    MESSAGE_SIZE_MAX_BYTES,
    UPDATE_VALUE_MAX_BYTES,
    InvalidateMessage,
    MalformedMessage,
    Message,
    RecallMessage,
    UpdateMessage,
    channel_key,
    channel_name,
    check_agent_id,
    decode,
    encode,
    encode_unsequenced,
)
from sagemem.errors import ConfigurationError, SageMemError
from sagemem.spec.vocabulary import MessageKind
from sagemem.values import KEY_LENGTH_MAX

# -- strategies -------------------------------------------------------------------------------

_ID_ALPHABET = st.sampled_from("abcXYZ019_.-")
namespaces = st.text(_ID_ALPHABET, min_size=1, max_size=64)
agent_ids = st.text(_ID_ALPHABET, min_size=1, max_size=128)
keys = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Zs", "Cf", "Co", "Cn")),
    min_size=1,
    max_size=KEY_LENGTH_MAX,
)
integers = st.integers(min_value=0, max_value=INTEGER_MAX)
invalidations = st.builds(InvalidateMessage, namespaces, keys, integers, agent_ids, seq=integers)
recalls = st.builds(RecallMessage, namespaces, keys, agent_ids, st.none() | integers, seq=integers)
messages: st.SearchStrategy[Message] = invalidations | recalls
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
valid_fields = st.fixed_dictionaries(
    {
        "fmt": st.just(FORMAT_VERSION),
        "kind": st.sampled_from(["invalidate", "recall"]),
        "ns": namespaces,
        "key": st.text(max_size=8),
        "version": integers,
        "sender": agent_ids,
        "seq": integers,
    }
)


def _invalidation_fields(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "fmt": 1,
        "kind": "invalidate",
        "ns": "ns",
        "key": "k",
        "version": 3,
        "sender": "w",
        "seq": 1,
    }
    fields.update(changes)
    return json.dumps({k: v for k, v in fields.items() if v is not _DROP}).encode()


_DROP = object()

# -- round trips ------------------------------------------------------------------------------


def test_an_invalidation_has_a_compact_documented_wire_form() -> None:
    """The wire form is the compact JSON object described in the decision record."""
    message = InvalidateMessage("ns", "belief:x", 7, "agent-a", 12)

    assert encode(message) == (
        b'{"fmt":1,"kind":"invalidate","ns":"ns","key":"belief:x","version":7,'
        b'"sender":"agent-a","seq":12}'
    )


def test_a_recall_omits_an_absent_owner_epoch() -> None:
    """owner_epoch is written only when known, and reads back as None when absent."""
    without = RecallMessage("ns", "k", "reader", None, 2)
    with_epoch = RecallMessage("ns", "k", "reader", 5, 2)

    assert b"owner_epoch" not in encode(without)
    assert decode(encode(without)) == without
    assert decode(encode(with_epoch)) == with_epoch


@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    """decode(encode(m)) == m for every valid message, and fits the size limit."""
    raw = encode(message)

    assert decode(raw) == message
    assert len(raw) <= MESSAGE_SIZE_MAX_BYTES


@given(messages)
def test_the_publish_script_template_plus_seq_is_the_encoding(message: Message) -> None:
    """The publish script's concatenation (template, decimal seq, '}') equals encode()."""
    assert encode_unsequenced(message) + f"{message.seq}}}".encode() == encode(message)


# -- hostile input ----------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_nothing_but_malformed_message(raw: bytes) -> None:
    """Random bytes either decode or raise MalformedMessage; nothing else escapes."""
    with contextlib.suppress(MalformedMessage):
        decode(raw)


@settings(max_examples=500)
@given(json_values)
def test_arbitrary_json_values_raise_nothing_but_malformed_message(value: object) -> None:
    """Any JSON value that is not a message raises MalformedMessage."""
    with pytest.raises(MalformedMessage):
        decode(json.dumps(value).encode())


@settings(max_examples=300)
@given(valid_fields, st.data())
def test_damaged_messages_raise_nothing_but_malformed_message(
    fields: dict[str, object], data: st.DataObject
) -> None:
    """A near-valid object with one field dropped or replaced never escapes as another error."""
    name = data.draw(st.sampled_from(sorted(fields)))
    if data.draw(st.booleans()):
        del fields[name]
    else:
        fields[name] = data.draw(json_values)
    with contextlib.suppress(MalformedMessage):
        decode(json.dumps(fields).encode())


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        pytest.param(b"not json", "not JSON", id="not-json"),
        pytest.param(b"\xff\xfe", "not UTF-8", id="invalid-utf8"),
        pytest.param(b"\xef\xbb\xbf{}", "not JSON", id="utf8-bom"),
        pytest.param(b"[1,2]", "JSON object", id="array"),
        pytest.param(b"42", "JSON object", id="number"),
        pytest.param(b"null", "JSON object", id="null"),
        pytest.param(b"{}", "format", id="empty-object"),
        pytest.param(b"[" * 2000 + b"]" * 2000, "not JSON", id="deeply-nested"),
        pytest.param(
            _invalidation_fields(version=True), "'version' must be an integer", id="bool-version"
        ),
        pytest.param(
            _invalidation_fields(version="3"), "'version' must be an integer", id="str-version"
        ),
        pytest.param(
            _invalidation_fields(version=3.0), "'version' must be an integer", id="float-version"
        ),
        pytest.param(_invalidation_fields(version=-1), "between 0", id="negative-version"),
        pytest.param(_invalidation_fields(version=2**63), "between 0", id="huge-version"),
        pytest.param(_invalidation_fields(seq=False), "'seq' must be an integer", id="bool-seq"),
        pytest.param(_invalidation_fields(version=_DROP), "missing fields", id="missing-version"),
        pytest.param(_invalidation_fields(value="x"), "unexpected fields", id="carries-a-value"),
        pytest.param(_invalidation_fields(fmt=2), "format 2", id="future-format"),
        pytest.param(_invalidation_fields(fmt=True), "format True", id="bool-format"),
        pytest.param(_invalidation_fields(kind="evict_all"), "kind 'evict_all'", id="unknown-kind"),
        pytest.param(_invalidation_fields(key=""), "key", id="empty-key"),
        pytest.param(_invalidation_fields(key="a\x00b"), "key", id="control-char-key"),
        pytest.param(_invalidation_fields(key=["k"]), "key", id="list-key"),
        pytest.param(_invalidation_fields(ns="a:b"), "namespace", id="colon-namespace"),
        pytest.param(_invalidation_fields(sender="a b"), "sender", id="space-sender"),
        pytest.param(_invalidation_fields(sender=7), "sender", id="int-sender"),
        pytest.param(b'{"fmt":1,"fmt":1}', "repeats", id="duplicate-field"),
        pytest.param(_invalidation_fields(version=float("nan")), "NaN", id="nan"),
        pytest.param(
            b'{"fmt":1,"kind":"recall","ns":"n","key":"k","sender":"w","owner_epoch":null,"seq":1}',
            "'owner_epoch' must be an integer",
            id="null-owner-epoch",
        ),
    ],
)
def test_a_malformed_message_is_rejected_saying_why(raw: bytes, complaint: str) -> None:
    """Each kind of damage raises MalformedMessage whose text names the problem."""
    with pytest.raises(MalformedMessage, match=complaint):
        decode(raw)


def test_an_oversized_message_is_refused_before_parsing() -> None:
    """Past the limit, even a well-formed object is refused by its length alone."""
    raw = _invalidation_fields(key="k" * MESSAGE_SIZE_MAX_BYTES)

    with pytest.raises(MalformedMessage, match=f"over the limit of {MESSAGE_SIZE_MAX_BYTES}"):
        decode(raw)


def test_decode_refuses_anything_but_bytes() -> None:
    """A str (already decoded text) is a programming error reported as MalformedMessage."""
    with pytest.raises(MalformedMessage, match="bytes"):
        decode('{"fmt":1}')  # type: ignore[arg-type]  # the wrong type on purpose


def test_malformed_message_is_a_sagemem_error_and_a_value_error() -> None:
    """Callers can catch it as SageMemError or as ValueError."""
    assert issubclass(MalformedMessage, SageMemError)
    assert issubclass(MalformedMessage, ValueError)


# -- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: InvalidateMessage("ns", "k", True, "w"), id="bool-version"),
        pytest.param(lambda: InvalidateMessage("ns", "k", -1, "w"), id="negative-version"),
        pytest.param(lambda: InvalidateMessage("ns", "", 1, "w"), id="empty-key"),
        pytest.param(lambda: InvalidateMessage("ns", "k", 1, "w", seq=-1), id="negative-seq"),
        pytest.param(lambda: RecallMessage("ns", "k", "w", owner_epoch=False), id="bool-epoch"),
        pytest.param(lambda: RecallMessage("n:s", "k", "w"), id="bad-namespace"),
    ],
)
def test_an_invalid_message_cannot_be_built(build: object) -> None:
    """The dataclasses validate their fields, so no invalid message exists to be encoded."""
    with pytest.raises(MalformedMessage):
        build()  # type: ignore[operator]  # a zero-argument lambda


def test_messages_never_carry_a_value() -> None:
    """Neither message type has a field that could carry a value into a cache."""
    for kind in (InvalidateMessage, RecallMessage):
        fields = {field.name for field in dataclasses.fields(kind)}
        assert "value" not in fields
        assert fields <= {"namespace", "key", "version", "sender", "owner_epoch", "seq"}


def test_agent_ids_are_checked() -> None:
    """Agent ids name channels: no ':', no spaces, not empty, at most 128 characters."""
    assert check_agent_id("agent-a.1_x") == "agent-a.1_x"
    for bad in ("", "a:b", "a b", "a" * 129, 7, None):
        with pytest.raises(ConfigurationError, match="agent id"):
            check_agent_id(bad)


def test_importing_sagemem_coherence_loads_no_driver() -> None:
    """The messages and events import without redis; the bus loads it on first use."""
    code = (
        "import sys, sagemem.coherence as c; c.InvalidateMessage; "
        "print('redis' in sys.modules); c.CoherenceBus; print('redis' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["False", "True"]


def test_the_package_exports_what_it_lists() -> None:
    """Every name in sagemem.coherence.__all__ resolves."""
    for name in sagemem.coherence.__all__:
        assert getattr(sagemem.coherence, name) is not None, name


# -- channel names ---------------------------------------------------------------------------

_SEPARATOR_HEAVY = st.text(st.sampled_from("ab:|%7C25*"), max_size=12)


@given(_SEPARATOR_HEAVY, _SEPARATOR_HEAVY)
def test_channel_key_keeps_exactly_the_prefix_relation(prefix: str, key: str) -> None:
    """An ACL rule `*|i|<channel_key(P)>*` means "keys starting with P" only if the encoding
    keeps the prefix relation both ways; a naive encoding (none) lets `x|i|P...` match."""
    assert channel_key(key).startswith(channel_key(prefix)) == key.startswith(prefix)
    assert "|" not in channel_key(key)


@given(namespaces, agent_ids, st.sampled_from(MessageKind), keys)
def test_a_channel_name_has_exactly_two_separators(
    namespace: str, agent: str, kind: MessageKind, key: str
) -> None:
    """The two '|' split agent, kind and key, so a glob's `*` cannot span a separator."""
    name = channel_name(namespace, agent, kind, key)
    assert name.count("|") == 2
    head, tag, tail = name.split("|")
    assert head == f"sagemem-bus:{{{namespace}}}:{agent}"
    assert (
        tag == {MessageKind.INVALIDATE: "i", MessageKind.RECALL: "r", MessageKind.UPDATE: "u"}[kind]
    )
    assert tail == channel_key(key)


def test_the_scripts_stamp_sequence_numbers_with_the_one_lua_function() -> None:
    """The wire format is written once: both stamping scripts use messages.LUA_SEQUENCED, and
    its Lua builds exactly what `encode` builds."""
    for script in (bus._PUBLISH_SCRIPT, redis_scripts.INVALIDATE_SCRIPT):
        assert LUA_SEQUENCED in script
        assert "'}'" not in script.replace(LUA_SEQUENCED, "")
    message = InvalidateMessage("ns", "k", 3, "writer", seq=41)
    head = encode_unsequenced(message).decode()
    tail = LUA_SEQUENCED.split(".. '", 1)[1].split("'", 1)[0]
    assert (head + "41" + tail).encode() == encode(message)


# -- write-update -----------------------------------------------------------------------------

update_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
updates = st.builds(
    UpdateMessage, namespaces, keys, integers, update_values, agent_ids, seq=integers
)


def test_an_update_of_a_value_json_cannot_carry_is_refused() -> None:
    """NaN, infinity or a non-JSON object in an update is a MalformedMessage, never sent."""
    for value in (float("nan"), float("inf"), {1, 2}):
        with pytest.raises(MalformedMessage, match="JSON value"):
            encode(UpdateMessage("ns", "k", 1, value, "w"))


def test_an_update_has_a_compact_wire_form_carrying_its_value() -> None:
    """An update is an invalidation's object with the committed value beside the version."""
    message = UpdateMessage("ns", "belief:x", 7, {"a": [1, "é"]}, "agent-a", 12)

    assert (
        encode(message)
        == (
            '{"fmt":1,"kind":"update","ns":"ns","key":"belief:x","version":7,"value":{"a":[1,"é"]},'
            '"sender":"agent-a","seq":12}'
        ).encode()
    )


@given(updates)
def test_every_update_round_trips_and_its_template_plus_seq_is_the_encoding(
    message: UpdateMessage,
) -> None:
    """decode(encode(u)) == u for any JSON value, and the relay script's template (the
    unsequenced form) plus the seq is the encoding."""
    raw = encode(message)

    assert decode(raw) == message
    assert raw == encode_unsequenced(message) + f"{message.seq}}}".encode()


def test_only_an_update_may_be_longer_than_the_message_limit() -> None:
    """An update may carry a value up to UPDATE_VALUE_MAX_BYTES; an invalidation of the same
    length, or an update beyond both limits, is refused saying why."""
    big = "x" * (MESSAGE_SIZE_MAX_BYTES + 100)
    update = UpdateMessage("ns", "k", 1, big, "w")
    assert decode(encode(update)) == update
    long_invalidation = _invalidation_fields(padding=big)
    with pytest.raises(MalformedMessage, match="only an update may carry a value"):
        decode(long_invalidation)
    huge = UpdateMessage("ns", "k", 1, "x" * (MESSAGE_SIZE_MAX_BYTES + UPDATE_VALUE_MAX_BYTES), "w")
    with pytest.raises(MalformedMessage, match="over the limit"):
        decode(encode(huge))


@pytest.mark.parametrize("missing", ["value", "version"])
def test_an_update_without_its_value_or_version_is_malformed(missing: str) -> None:
    """An update needs both the version and the value it announces."""
    fields: dict[str, object] = {
        "fmt": 1,
        "kind": "update",
        "ns": "ns",
        "key": "k",
        "version": 3,
        "value": None,
        "sender": "w",
        "seq": 1,
    }
    del fields[missing]
    with pytest.raises(MalformedMessage, match="missing fields"):
        decode(json.dumps(fields).encode())
