"""Parameters renamed to the library's one naming scheme; their old names are still accepted
(deprecated, for one release, unless the design note published them).

The scheme: an address is named after its server (`redis_url`, `postgres_dsn`, as in
`sagemem.connect` and the `SAGEMEM_*` variables); a duration ends in its unit (`ttl_s`); a
connection pool's bound is `pool_size_max`. The design note's spellings `L2Tier(url=...)`,
`CoherenceBus(url=...)` and `L3Tier(dsn=...)` are the published API and stay accepted without a
warning; `ttl=` and `connections_max=` are deprecated. `connect()` names a tier's setting by
the tier and the tier's own name for it (`l1_capacity` is `L1Tier(capacity=)`, `l2_ttl_s` is
`L2Tier(ttl_s=)`).
"""

from __future__ import annotations

import enum
import warnings
from typing import Final

from sagemem.errors import ConfigurationError

__all__ = ["UNSET", "Unset", "renamed"]


class Unset(enum.Enum):
    """The type of `UNSET`: an old parameter name that was not passed."""

    UNSET = 0


UNSET: Final = Unset.UNSET


def renamed[T](
    owner: str,
    new: str,
    new_value: T,
    default: T,
    old: str,
    old_value: T | Unset,
    *,
    deprecated: bool = True,
) -> T:
    """The value of parameter `new`, taking the old name `old` if only that was given.

    Passing both (the new one differing from its default) is a `ConfigurationError`; passing
    a `deprecated` old name warns (`DeprecationWarning`, pointing at the caller of `owner`)."""
    if isinstance(old_value, Unset):
        return new_value
    if new_value is not default and new_value != default:
        raise ConfigurationError(
            f"{owner}: pass {new}= only ({old}= is its deprecated old name), got both "
            f"{new}={new_value!r} and {old}={old_value!r}"
        )
    if not deprecated:
        return old_value
    warnings.warn(
        f"{owner}({old}=...) is deprecated; call it {new}= ({old}= goes in the next release)",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value
