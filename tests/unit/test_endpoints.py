"""The tiers find an unconfigured server through `sagemem.endpoints`, injected from the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sagemem import endpoints
from sagemem.errors import ConfigurationError, TierUnavailable
from sagemem.tiers.l2 import L2Tier

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_registers_the_services_fallback_for_both_kinds() -> None:
    """Importing sagemem registers a fallback for Redis and Postgres (sagemem.services)."""
    for kind in ("redis", "postgres"):
        previous = endpoints.set_fallback(kind, None)
        try:
            assert previous is not None
            assert previous.__qualname__.startswith("_embedded_fallback")
        finally:
            endpoints.set_fallback(kind, previous)


async def test_a_tier_without_an_address_asks_the_registered_fallback() -> None:
    """L2Tier() connects to what the fallback returns (here an unreachable port, so connect()
    fails naming it), and without a fallback it says what to do."""
    asked: list[str] = []

    def nowhere() -> str:
        asked.append("redis")
        return "redis://127.0.0.1:1/0"

    previous = endpoints.set_fallback("redis", nowhere)
    try:
        with pytest.raises(TierUnavailable, match=r"127\.0\.0\.1:1"):
            await L2Tier(connect_timeout_s=0.5).connect()
        assert asked == ["redis"]
        endpoints.set_fallback("redis", None)
        with pytest.raises(ConfigurationError, match="no Redis URL was given"):
            await L2Tier().connect()
    finally:
        endpoints.set_fallback("redis", previous)


def test_tiers_and_coherence_never_import_services() -> None:
    """No module under sagemem/tiers or sagemem/coherence imports sagemem.services, at the top
    or inside a function (the fallback is injected from the package's top)."""
    offenders = []
    for folder in ("tiers", "coherence"):
        for path in sorted((ROOT / "sagemem" / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "sagemem.services":
                    offenders.append(f"{path.name}:{node.lineno}")
                if isinstance(node, ast.Import) and any(
                    alias.name == "sagemem.services" for alias in node.names
                ):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_an_unknown_kind_is_refused() -> None:
    """set_fallback names the kinds it knows."""
    with pytest.raises(ConfigurationError, match="postgres"):
        endpoints.set_fallback("mysql", None)  # type: ignore[arg-type]


def test_redacted_url_hides_the_password_only() -> None:
    """The password becomes *** and the rest of the URL stays."""
    assert endpoints.redacted_url("redis://:secret@h:1/0") == "redis://:***@h:1/0"
    assert endpoints.redacted_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert endpoints.redacted_url("redis://h:1/0") == "redis://h:1/0"
