"""What the wheel ships and what importing sagemem loads."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sagemem

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        ["uv", "build", "--wheel", "--out-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    (wheel,) = out.glob("sagemem-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_wheel_ships_the_spec_under_the_sagemem_name_only(wheel_names: list[str]) -> None:
    """The protocol table ships as sagemem/spec; no generic top-level name is taken."""
    top_levels = {name.split("/", 1)[0] for name in wheel_names}
    assert {name for name in top_levels if not name.startswith("sagemem")} == set()
    assert any(name.startswith("sagemem/spec/") and name.endswith(".py") for name in wheel_names)
    assert "sagemem/py.typed" in wheel_names


def test_wheel_ships_the_demo_with_its_page(wheel_names: list[str]) -> None:
    """`sagemem demo` works from an installed wheel: the demo ships as sagemem/demo, page too."""
    for name in ("server/main.py", "server/app.py", "server/run.py", "server/static/index.html"):
        assert f"sagemem/demo/{name}" in wheel_names, name


def test_the_demo_is_one_module_tree_under_both_names() -> None:
    """`demo.server.app` (a clone's short name) is the very module `sagemem.demo.server.app`."""
    code = (
        "import demo.server.app as a, sagemem.demo.server.app as b, demo.server.run as c; "
        "import sagemem.demo.server.run as d; print(a is b and c is d, a.__spec__.name)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["True", "sagemem.demo.server.app"]


def test_importing_sagemem_loads_no_driver() -> None:
    """`import sagemem`, its errors and value checks import neither redis nor asyncpg."""
    code = (
        "import sys, sagemem, sagemem.errors, sagemem.values, sagemem.spec; "
        "print(sorted(m for m in ('redis', 'asyncpg', 'networkx', 'z3') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


PUBLIC_SURFACE = {
    "AgentCapability": "sagemem.scope",
    "ClosedResourceError": "sagemem.errors",
    "CoherenceBus": "sagemem.coherence.bus",
    "CoherentL1Tier": "sagemem.tiers.l1_coherent",
    "ConfigurationError": "sagemem.errors",
    "DRAMTier": "sagemem.tiers.dram",
    "InvalidKeyError": "sagemem.errors",
    "InvalidValueError": "sagemem.errors",
    "L1State": "sagemem.spec",
    "L1Tier": "sagemem.tiers.l1",
    "L2Tier": "sagemem.tiers.l2",
    "L3Tier": "sagemem.tiers.l3",
    "MemoryHierarchy": "sagemem.hierarchy",
    "Mode": "sagemem.spec",
    "OutcomeUnknown": "sagemem.errors",
    "SageMemError": "sagemem.errors",
    "ScopeViolationError": "sagemem.errors",
    "ScopedHierarchy": "sagemem.scope",
    "TierEntry": "sagemem.tiers.base",
    "TierUnavailable": "sagemem.errors",
    "ValueTooLargeError": "sagemem.errors",
    "VersionConflict": "sagemem.errors",
    "connect": "sagemem.connection",
}


def test_the_public_surface_is_pinned_and_each_name_is_the_deep_one() -> None:
    """`import sagemem` exports exactly what the README teaches (tiers, hierarchy, coherent L1,
    bus, capability, scoped view, modes, states, errors, connect), each the very object its
    module defines; adding or dropping a name must be a deliberate edit of this list."""
    assert sorted(sagemem.__all__) == sorted(PUBLIC_SURFACE)
    for name, module in PUBLIC_SURFACE.items():
        assert getattr(sagemem, name) is getattr(importlib.import_module(module), name), name


def test_every_public_name_resolves() -> None:
    """Each name in sagemem.__all__ is importable from the package."""
    for name in sagemem.__all__:
        assert getattr(sagemem, name) is not None, name
    assert set(sagemem.__all__) <= set(dir(sagemem))
