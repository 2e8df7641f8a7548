"""JSON values that are easy to get wrong on the way through a tier, a strategy generating
JSON values, and a type-exact comparison. Shared so every tier is held to the same values.
"""

from __future__ import annotations

from hypothesis import strategies as st

from sagemem.values import JSONValue

TRICKY_VALUES: list[JSONValue] = [
    None,
    True,
    False,
    0,
    1,
    -(2**70),
    2**80,
    0.1,
    1e-7,
    -0.0,
    1.0,
    -2.5,
    1e16,
    1.5e16,
    123456789012345680000.0,
    1e308,
    -1e308,
    5e-324,
    2.2250738585072014e-308,
    "",
    "héllo ☃ 𝄞 \u200b\t\n",
    "1e+16 in a string stays a string",
    [],
    {},
    [[], {}, [None]],
    {"b": 1, "a": [1.0, 2, True, None, "x"], "nested": {"deep": [{"k": 1e20}, {"z": -0.0}]}},
    {"": "empty key", "1": "digit key"},
]


def assert_same_json(expected: JSONValue, actual: JSONValue) -> None:
    """`actual` equals `expected` with the same type at every position (bool is not int)."""
    assert type(actual) is type(expected), f"{actual!r} is not a {type(expected).__name__}"
    if isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert sorted(actual) == sorted(expected)
        for item_key, item in expected.items():
            assert_same_json(item, actual[item_key])
    elif isinstance(expected, list):
        assert isinstance(actual, list)
        assert len(actual) == len(expected)
        for want, have in zip(expected, actual, strict=True):
            assert_same_json(want, have)
    else:
        assert actual == expected


_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20
)
json_values: st.SearchStrategy[JSONValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)
