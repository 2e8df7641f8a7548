"""Validation and encoding of keys and values, done before any tier is touched.

A value is JSON-compatible: `dict` with `str` keys, `list`, `str`, `int`, `float` (finite),
`bool` or `None`, nested to a bounded depth. Anything that would not read back equal from every
tier (tuples, sets, non-str dict keys, NaN, infinities, subclasses, NUL characters and lone
surrogates that Postgres JSONB refuses) is rejected with `InvalidValueError` naming the path of
the offending part. Values are stored as their canonical JSON text, so every read decodes a
fresh object and no caller can mutate what is stored.

Keys are non-empty `str` of at most `KEY_LENGTH_MAX` characters with no control characters
(Unicode category Cc: C0, DEL and C1). Namespaces are `NAMESPACE_PATTERN` (no ':'), so the
prefix `sagemem:<namespace>:` of one namespace can never be a prefix of another's, and do not
end in `DERIVED_NAMESPACE_SUFFIX` (`<ns>.l2` is the L2-labelled space derived from `<ns>`, see
`sagemem.scope`). Versions given by callers (`expected_version`) lie in `1..VERSION_MAX`, the
range of the home's version column.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Final

from sagemem.errors import (
    ConfigurationError,
    InvalidKeyError,
    InvalidValueError,
    ValueTooLargeError,
)

__all__ = [
    "DEPTH_MAX",
    "DERIVED_NAMESPACE_SUFFIX",
    "KEY_LENGTH_MAX",
    "NAMESPACE_PATTERN",
    "VALUE_SIZE_MAX_BYTES",
    "VERSION_MAX",
    "JSONValue",
    "TierEntry",
    "check_expected_version",
    "check_key",
    "check_namespace",
    "decode_value",
    "encode_value",
]

type JSONValue = dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None

KEY_LENGTH_MAX: Final = 512
DEPTH_MAX: Final = 64
VALUE_SIZE_MAX_BYTES: Final = 1 << 20
NAMESPACE_PATTERN: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# Unicode category Cc exactly: C0 controls, DEL and the C1 controls (CSI, NEL, ...).
_FORBIDDEN_KEY_CHARS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
DERIVED_NAMESPACE_SUFFIX: Final = ".l2"
VERSION_MAX: Final = (1 << 63) - 1  # the home's version column is a Postgres bigint
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")


def check_key(key: object) -> str:
    """Return `key` if it is a valid key, else raise `InvalidKeyError` saying why."""
    if type(key) is str and 0 < len(key) <= KEY_LENGTH_MAX and key.isprintable():
        return key  # fast path: printable text has no control characters or lone surrogates
    if type(key) is not str:
        raise InvalidKeyError(
            f"key must be a str, got {type(key).__name__}: {key!r}; convert it with str() first"
        )
    if not key:
        raise InvalidKeyError("key must be a non-empty string, got ''")
    if len(key) > KEY_LENGTH_MAX:
        raise InvalidKeyError(
            f"key {key[:40]!r}... is {len(key)} characters long; the maximum is {KEY_LENGTH_MAX}"
        )
    if _FORBIDDEN_KEY_CHARS.search(key) or _SURROGATE.search(key):
        raise InvalidKeyError(
            f"key {key!r} contains a control character or a lone surrogate; "
            "use printable characters only"
        )
    return key


def check_namespace(namespace: object, *, derived: bool = False) -> str:
    """Return `namespace` if it matches `NAMESPACE_PATTERN`, else raise `ConfigurationError`.

    A namespace ending in `DERIVED_NAMESPACE_SUFFIX` is the L2-labelled space of another
    namespace; it is refused unless `derived` (only the L2 tier of that space passes it), so no
    hierarchy, grant or bus can share its keys with another namespace's scratch space.
    """
    if type(namespace) is not str or not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ConfigurationError(
            f"namespace {namespace!r} is invalid: use 1 to 64 characters from "
            "letters, digits, '_', '.' and '-' (no ':', so namespaces cannot overlap)"
        )
    if not derived and namespace.endswith(DERIVED_NAMESPACE_SUFFIX):
        raise ConfigurationError(
            f"namespace {namespace!r} ends in {DERIVED_NAMESPACE_SUFFIX!r}, which names the "
            f"L2-labelled space of namespace {namespace.removesuffix(DERIVED_NAMESPACE_SUFFIX)!r}"
            " (sagemem.scope); pick a name without that ending, e.g. "
            f"{namespace.removesuffix(DERIVED_NAMESPACE_SUFFIX) + '-l2'!r}"
        )
    return namespace


def check_expected_version(expected: object) -> int | None:
    """Return `expected` if it is None or a version (an int in 1..`VERSION_MAX`), else raise
    `InvalidValueError` saying what a version is."""
    if expected is None:
        return None
    if type(expected) is not int or not 1 <= expected <= VERSION_MAX:
        raise InvalidValueError(
            "expected_version must be None (the key must not exist) or a version read from "
            f"the hierarchy (an int from 1 to {VERSION_MAX}), got "
            f"{type(expected).__name__} {expected!r}"
        )
    return expected


def _check(value: object, path: str, depth: int) -> None:
    kind = type(value)
    if value is None or kind is bool or kind is int:
        return
    if kind is float and isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValueError(
                f"value at {path} is {value!r}; JSON has no NaN or infinity, store None or a "
                "string instead"
            )
        return
    if kind is str and isinstance(value, str):
        _check_text(value, f"string at {path}")
        return
    if depth >= DEPTH_MAX:
        raise InvalidValueError(f"value at {path} is nested deeper than {DEPTH_MAX} levels")
    if kind is list and isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1)
        return
    if kind is dict and isinstance(value, dict):
        for item_key, item in value.items():
            if type(item_key) is not str:
                raise InvalidValueError(
                    f"dict at {path} has a {type(item_key).__name__} key {item_key!r}; JSON "
                    "object keys are strings, so it would read back as a different key: "
                    "convert the key to str"
                )
            _check_text(item_key, f"dict key {item_key!r} at {path}")
            _check(item, f"{path}[{item_key!r}]", depth + 1)
        return
    hint = "use a list" if kind in (tuple, set, frozenset) else "convert it to a JSON type"
    raise InvalidValueError(
        f"value at {path} is a {kind.__name__} ({value!r:.80}), which would not read back "
        f"unchanged; {hint} (allowed: dict with str keys, list, str, int, float, bool, None)"
    )


def _check_text(text: str, what: str) -> None:
    if "\x00" in text or _SURROGATE.search(text):
        raise InvalidValueError(
            f"{what} contains a NUL character or a lone surrogate, which Postgres JSONB "
            "cannot store; remove it or encode the text (e.g. base64)"
        )


def encode_value(value: object, *, size_max_bytes: int = VALUE_SIZE_MAX_BYTES) -> str:
    """Validate `value` and return its canonical JSON text, or raise `InvalidValueError`."""
    _check(value, "value", 0)
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as error:  # an int too long to convert to decimal text
        raise InvalidValueError(
            f"value could not be encoded as JSON: {error}; store very large numbers as strings"
        ) from error
    size = len(text.encode("utf-8"))
    if size > size_max_bytes:
        raise ValueTooLargeError(
            f"value encodes to {size} bytes of JSON, over the limit of {size_max_bytes}; "
            "store it in pieces or raise value_size_max_bytes",
            size_bytes=size,
            limit_bytes=size_max_bytes,
        )
    return text


def decode_value(text: str | bytes) -> JSONValue:
    """Decode JSON text written by `encode_value` into a fresh object."""
    result: JSONValue = json.loads(text)
    return result


@dataclass(frozen=True, slots=True)
class TierEntry:
    """One key's value as held by a tier, with the home version it was copied from (if known).

    Defined here, below the tiers and the coherence adapters that both use it;
    `sagemem.tiers.base.TierEntry` and `sagemem.TierEntry` are this class."""

    value: JSONValue
    version: int | None = None
