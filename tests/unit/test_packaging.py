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
def wheel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        ["uv", "build", "--wheel", "--out-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    (wheel,) = out.glob("sagemem-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel_names(wheel_path: Path) -> list[str]:
    with zipfile.ZipFile(wheel_path) as archive:
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


def test_wheel_ships_the_checkers_as_sagemem_proofs(wheel_names: list[str]) -> None:
    """`sagemem check` works from an installed wheel: the checkers ship as sagemem/proofs."""
    for name in ("cli.py", "explore.py", "z3_check.py", "mutants.py", "bugs.py"):
        assert f"sagemem/proofs/{name}" in wheel_names, name


def test_without_the_check_extra_sagemem_check_names_the_extra() -> None:
    """With networkx missing, `sagemem check` exits 2 and says `pip install "sagemem[check]"`."""
    code = (
        "import sys; sys.modules['networkx'] = None\n"
        "from sagemem.cli import main\n"
        "sys.exit(main(['check']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stderr
    assert 'pip install "sagemem[check]"' in result.stderr


def test_an_installed_wheel_with_the_check_extra_runs_sagemem_check(
    wheel_path: Path, tmp_path: Path
) -> None:
    """A fresh virtual environment with only the wheel and its [check] extra (no clone on the
    path) runs a small `sagemem check` to the end."""
    venv = tmp_path / "venv"
    subprocess.run(
        ["uv", "venv", "--quiet", "--python", sys.executable, str(venv)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    subprocess.run(
        ["uv", "pip", "install", "--quiet", "--python", str(python), f"{wheel_path}[check]"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    result = subprocess.run(
        [
            str(venv / "bin" / "sagemem"),
            "check",
            "--mode",
            "coherent",
            "--agents",
            "2",
            "--writes",
            "1",
            "--fault-budget",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "every check passed" in result.stdout
