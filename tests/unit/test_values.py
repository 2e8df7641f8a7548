"""Key and value validation: what is refused, with which error, and what round-trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given

from sagemem.errors import (
    ConfigurationError,
    InvalidKeyError,
    InvalidValueError,
    SageMemError,
    ValueTooLargeError,
)
from sagemem.values import (
    KEY_LENGTH_MAX,
    JSONValue,
    check_key,
    check_namespace,
    decode_value,
    encode_value,
)
from tests.json_samples import json_values


@given(json_values)
def test_accepted_values_round_trip_equal_with_same_types(value: JSONValue) -> None:
    """Every accepted value decodes back equal, with bools still bools and ints still ints."""
    decoded = decode_value(encode_value(value))
    assert decoded == value
    assert repr(decoded) == repr(value) or (
        isinstance(value, float) and math.copysign(1, value) != math.copysign(1, decoded)  # type: ignore[arg-type]  # decoded is a float here
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ((1, 2), "tuple"),
        ({1, 2}, "set"),
        ({1: "a"}, "int key"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        ({"a": [1, float("-inf")]}, "value['a'][1]"),
        (b"bytes", "bytes"),
        (object(), "object"),
        ("a\x00b", "NUL"),
        ("\ud800", "surrogate"),
        ({"k\x00": 1}, "NUL"),
    ],
)
def test_values_that_would_change_are_refused_naming_the_part(value: object, fragment: str) -> None:
    """Values that would not read back unchanged raise InvalidValueError naming the part."""
    with pytest.raises(InvalidValueError) as info:
        encode_value(value)
    assert fragment.lower() in str(info.value).lower()
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, SageMemError)


def test_subclasses_of_json_types_are_refused() -> None:
    """A str or dict subclass is refused: it would read back as the plain type."""

    class Label(str):
        pass

    with pytest.raises(InvalidValueError):
        encode_value(Label("x"))


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    """Deeply nested values are refused instead of overflowing the stack."""
    value: JSONValue = []
    for _ in range(100):
        value = [value]
    with pytest.raises(InvalidValueError, match="nested deeper"):
        encode_value(value)


def test_size_limit_reports_size_and_limit() -> None:
    """A value over the size limit raises ValueTooLargeError carrying both numbers."""
    with pytest.raises(ValueTooLargeError) as info:
        encode_value("x" * 100, size_max_bytes=50)
    assert info.value.size_bytes == 102
    assert info.value.limit_bytes == 50


@pytest.mark.parametrize(
    "key", ["", 1, None, b"k", "a\nb", "tab\t", "x" * (KEY_LENGTH_MAX + 1), "\ud800"]
)
def test_invalid_keys_are_refused(key: object) -> None:
    """Keys must be non-empty printable str within the length limit."""
    with pytest.raises(InvalidKeyError):
        check_key(key)


@pytest.mark.parametrize("key", ["a", "fact:pi", "team/a b", "ü" * KEY_LENGTH_MAX])
def test_valid_keys_pass_unchanged(key: str) -> None:
    """Valid keys are returned as given."""
    assert check_key(key) == key


@pytest.mark.parametrize("namespace", ["", "a:b", "a b", "x" * 65, 3])
def test_invalid_namespaces_are_refused(namespace: object) -> None:
    """Namespaces cannot contain ':' (so no namespace prefix can overlap another's)."""
    with pytest.raises(ConfigurationError):
        check_namespace(namespace)


def test_integers_too_long_for_decimal_text_are_refused() -> None:
    """An int Python refuses to print in decimal is an InvalidValueError, not a raw ValueError."""
    with pytest.raises(InvalidValueError, match="large numbers as strings"):
        encode_value({"n": 10**5000})
