"""One naming scheme for addresses, durations and pool sizes, with the old names as aliases."""

from __future__ import annotations

import warnings

import pytest

from sagemem import CoherenceBus, DRAMTier, L2Tier, L3Tier
from sagemem.errors import ConfigurationError

REDIS = "redis://127.0.0.1:1/0"
POSTGRES = "postgresql://nobody@127.0.0.1:1/none"


def test_the_new_names_configure_each_constructor() -> None:
    """redis_url / postgres_dsn / ttl_s / pool_size_max are accepted and read back."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l2 = L2Tier(redis_url=REDIS, ttl_s=1.5, pool_size_max=3)
        bus = CoherenceBus(redis_url=REDIS, pool_size_max=2)
        l3 = L3Tier(postgres_dsn=POSTGRES, pool_size_max=4)
        dram = DRAMTier(postgres_dsn=POSTGRES)
    assert (l2.redis_url, l2.ttl_s, l2.ttl) == (REDIS, 1.5, 1.5)
    assert "ttl_s=1.5" in repr(l2)
    assert bus.namespace == "default"
    assert l3.namespace == dram.namespace == "default"


def test_the_design_notes_spellings_stay_accepted_without_a_warning() -> None:
    """L2Tier(url=), CoherenceBus(url=) and L3Tier/DRAMTier(dsn=) are the published API."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l2 = L2Tier(url=REDIS, namespace="myapp")
        CoherenceBus(url=REDIS)
        L3Tier(dsn=POSTGRES)
        DRAMTier(dsn=POSTGRES)
    assert l2.url == l2.redis_url == REDIS


@pytest.mark.parametrize(
    ("build", "old"),
    [
        (lambda: L2Tier(REDIS, ttl=2.0), "ttl"),
        (lambda: L2Tier(REDIS, connections_max=2), "connections_max"),
        (lambda: CoherenceBus(REDIS, connections_max=2), "connections_max"),
    ],
)
def test_a_deprecated_name_still_works_and_says_the_new_one(build: object, old: str) -> None:
    """ttl= and connections_max= warn with the new name, and take effect."""
    assert callable(build)
    with pytest.warns(DeprecationWarning, match=f"{old}=.*deprecated.*(ttl_s|pool_size_max)="):
        built = build()
    if isinstance(built, L2Tier) and old == "ttl":
        assert built.ttl_s == 2.0


@pytest.mark.parametrize(
    "build",
    [
        lambda: L2Tier(REDIS, ttl_s=1.0, ttl=2.0),
        lambda: L2Tier(redis_url=REDIS, url="redis://127.0.0.1:2/0"),
        lambda: L2Tier(REDIS, pool_size_max=3, connections_max=2),
        lambda: CoherenceBus(REDIS, pool_size_max=3, connections_max=2),
        lambda: L3Tier(postgres_dsn=POSTGRES, dsn="postgresql://other@127.0.0.1:1/x"),
        lambda: DRAMTier(postgres_dsn=POSTGRES, dsn="postgresql://other@127.0.0.1:1/x"),
    ],
)
def test_a_setting_given_under_both_names_is_refused(build: object) -> None:
    """Both the new and the old name at once is a ConfigurationError naming both."""
    assert callable(build)
    with pytest.raises(ConfigurationError, match=r"pass .* only"):
        build()


def test_bad_values_under_an_old_name_are_refused_like_under_the_new() -> None:
    """The old name goes through the same checks: a negative TTL is a ConfigurationError."""
    with (
        pytest.warns(DeprecationWarning, match="ttl_s"),
        pytest.raises(ConfigurationError, match="ttl_s"),
    ):
        L2Tier(REDIS, ttl=-1.0)
    with pytest.raises(ConfigurationError, match="pool_size_max"):
        L2Tier(REDIS, pool_size_max=0)
