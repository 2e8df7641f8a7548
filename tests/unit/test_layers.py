"""The package's layers point down only: a module imports nothing from a layer above it, and
no module of the lower layers hides an import inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "sagemem"

# From the bottom up; a module may import its own layer and those before it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "sagemem.errors",
            "sagemem.values",
            "sagemem.keyspace",
            "sagemem.endpoints",
            "sagemem.embedding",
            "sagemem.conflicts",
            "sagemem._lifecycle",
            "sagemem._renamed",
        ),
    ),
    ("spec", ("sagemem.spec",)),
    ("adapters", ("sagemem.coherence", "sagemem.postgres", "sagemem._driver_errors")),
    ("tiers", ("sagemem.tiers",)),
    ("hierarchy", ("sagemem.hierarchy",)),
    ("scope", ("sagemem.scope", "sagemem.connection")),
)
LOWER_FOLDERS = ("coherence", "tiers")


def _layer_of(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, inside a function) of every sagemem import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only
            if isinstance(child, ast.ImportFrom) and child.module == "sagemem":
                found.extend((child.lineno, f"sagemem.{a.name}", in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.lineno, child.module, in_function))
            elif isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name, in_function) for alias in child.names)
            visit(child, nested)

    visit(tree, False)
    return [entry for entry in found if entry[1].startswith("sagemem")]


def _modules() -> list[Path]:
    return sorted(
        path
        for path in ROOT.rglob("*.py")
        if not {"spec", "demo", "proofs"} & set(path.relative_to(ROOT).parts[:1])
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_from_a_layer_above_its_own(path: Path) -> None:
    """A module of layer n imports only layers <= n (modules outside the list are the top)."""
    dotted = "sagemem." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
    own = _layer_of(dotted.removesuffix(".__init__"))
    if own is None:
        return  # the top: CLI, grants, integrations, evaluation, services, the package root
    upward = [
        f"line {line}: {module}"
        for line, module, _ in _imports(path)
        if (layer := _layer_of(module)) is None or layer > own
    ]
    assert upward == [], f"{dotted} (layer {LAYERS[own][0]}) imports upward: {upward}"


def test_the_coherence_and_tier_modules_import_nothing_inside_functions() -> None:
    """No import is hidden in a function to dodge a cycle under sagemem/coherence or tiers."""
    hidden = [
        f"{path.relative_to(ROOT)}:{line} {module}"
        for folder in LOWER_FOLDERS
        for path in sorted((ROOT / folder).glob("*.py"))
        for line, module, inside in _imports(path)
        if inside
    ]
    assert hidden == []
