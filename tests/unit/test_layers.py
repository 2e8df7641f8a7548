"""The package's layers point down only: a module imports nothing from a layer above it, and
no module imports a project module inside a function (save a short, named allowlist).

How the check works: each module of `sagemem/` (its own files: the `spec`, `proofs` and `demo`
links are the clone's folders) and of the clone's `spec/` and `demo/` is parsed with `ast`;
every import statement is resolved to an absolute module name (relative imports included, and
`from sagemem import x` counted as `sagemem.x`). The module's layer is looked up in `LAYERS`
(a module of no listed layer is the top: the package root, the CLI, grants, integrations,
evaluation, services); an import of a higher layer fails the first test, whether it sits at the
top of the file, in a function or under `if TYPE_CHECKING:`. The second test fails on any
import of a project module (`sagemem`, `spec`, `proofs`, `demo`, `benchmarks`) inside a
function body, unless the pair (file, imported module) is in `FUNCTION_IMPORTS_ALLOWED`, whose
entries each say why; an entry that no longer matches an import fails the third test.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "sagemem"

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
    ("spec", ("sagemem.spec", "spec")),
    (
        "adapters",
        (
            "sagemem.coherence",
            "sagemem.postgres",
            "sagemem._driver_errors",
            "sagemem.redis_topology",
        ),
    ),
    ("tiers", ("sagemem.tiers",)),
    ("hierarchy", ("sagemem.hierarchy",)),
    ("scope", ("sagemem.scope",)),
    ("connect", ("sagemem.connection",)),
)
# The clone's tools, above the whole library: the wheel ships proofs and demo as
# sagemem.proofs and sagemem.demo, but no library module may depend on them.
TOOLS: Final = ("proofs", "demo", "benchmarks", "sagemem.proofs", "sagemem.demo")
PROJECT: Final = ("sagemem", "spec", "proofs", "demo", "benchmarks")

# (file relative to the repository, imported module) -> why the import sits in a function.
FUNCTION_IMPORTS_ALLOWED: Final[dict[tuple[str, str], str]] = {
    ("sagemem/cli.py", "benchmarks.run_all"): (
        "`sagemem bench`: benchmarks/ is not in the wheel; imported only from a clone, after "
        "the CLI has checked that the folder exists"
    ),
    ("sagemem/cli.py", "sagemem.integrations.mcp_server"): (
        "`sagemem mcp` needs the optional extra sagemem[mcp]; the CLI catches the missing "
        "SDK and names the extra"
    ),
    ("sagemem/cli.py", "sagemem.grants"): (
        "lazy subcommand: `sagemem --help`, `check` and `demo` load no Redis or Postgres driver"
    ),
    ("sagemem/cli.py", "sagemem.reindex"): (
        "lazy subcommand: `sagemem --help`, `check` and `demo` load no Redis or Postgres driver"
    ),
    ("sagemem/cli.py", "sagemem.evaluation.locomo"): (
        "lazy subcommand: `sagemem --help`, `check` and `demo` load no Redis or Postgres driver"
    ),
    ("sagemem/cli.py", "sagemem.services"): (
        "lazy subcommand: `sagemem --help`, `check` and `demo` start no embedded-server code"
    ),
}


def _dotted(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _rank(module: str) -> int:
    """The height of `module`'s layer: its index in LAYERS; above them the top (every module
    of no listed layer); above the top the clone's tools."""
    if any(module == p or module.startswith(p + ".") for p in TOOLS):
        return len(LAYERS) + 1
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return len(LAYERS)


def _imports(path: Path, dotted: str | None = None) -> list[tuple[int, str, bool, bool]]:
    """(line, absolute module, inside a function, under TYPE_CHECKING) of every project
    import in `path` (whose module name is `dotted`, by default its place in the clone)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = (dotted or _dotted(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str, bool, bool]] = []

    def visit(node: ast.AST, in_function: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names: list[str] = []
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package[: len(package) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                if child.module is None or base == "sagemem":
                    # `from . import x`, `from sagemem import x`: x may be a module
                    names = [f"{base}.{alias.name}" for alias in child.names]
                else:
                    names = [base]
            elif isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.extend((child.lineno, name, in_function, typing_only) for name in names)
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            guarded = typing_only or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            visit(child, nested, guarded)

    visit(tree, False, False)
    return [entry for entry in found if entry[1].split(".")[0] in PROJECT]


def _library_modules() -> list[Path]:
    """The library's own files (not the spec/proofs/demo links into the clone's folders)."""
    return sorted(
        path
        for path in ROOT.rglob("*.py")
        if not {"spec", "demo", "proofs"} & set(path.relative_to(ROOT).parts[:1])
    )


def _checked_modules() -> list[Path]:
    """The library plus the clone's spec/ and demo/ (proofs/ has its own owners and checks)."""
    clone = sorted(path for folder in ("spec", "demo") for path in (REPO / folder).rglob("*.py"))
    return [*_library_modules(), *clone]


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_from_a_layer_above_its_own(path: Path) -> None:
    """A module imports only its own layer and those below: a listed layer nothing of the
    top, the top none of the clone's tools (save the allowlisted lazy subcommands)."""
    dotted = _dotted(path)
    own = _rank(dotted)
    upward = [
        f"line {line}: {module}"
        for line, module, _, _ in _imports(path)
        if _rank(module) > own
        and (str(path.relative_to(REPO)), module) not in FUNCTION_IMPORTS_ALLOWED
    ]
    where = LAYERS[own][0] if own < len(LAYERS) else "the top"
    assert upward == [], f"{dotted} (layer {where}) imports upward: {upward}"


def test_no_module_imports_a_project_module_inside_a_function() -> None:
    """No import of a project module hides in a function (to dodge a cycle or otherwise),
    except the allowlisted lazy subcommands of the CLI."""
    hidden = [
        f"{path.relative_to(REPO)}:{line} {module}"
        for path in _checked_modules()
        for line, module, inside, _ in _imports(path)
        if inside and (str(path.relative_to(REPO)), module) not in FUNCTION_IMPORTS_ALLOWED
    ]
    assert hidden == []


def test_every_allowlisted_function_import_still_exists() -> None:
    """An allowlist entry whose import is gone is removed, so the list stays short and true."""
    present = {
        (str(path.relative_to(REPO)), module)
        for path in _checked_modules()
        for _, module, inside, _ in _imports(path)
        if inside
    }
    assert set(FUNCTION_IMPORTS_ALLOWED) - present == set()


def test_the_checker_sees_hidden_and_upward_imports(tmp_path: Path) -> None:
    """The scanner resolves a relative import inside a function and sees a TYPE_CHECKING one;
    both would fail the checks above for a module of the tiers."""
    module = tmp_path / "probe.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from sagemem.hierarchy import MemoryHierarchy\n"
        "def f() -> None:\n"
        "    from .l3 import L3Tier\n"
        "    from sagemem import services\n",
        encoding="utf-8",
    )
    found = _imports(module, "sagemem.tiers.probe")
    assert found == [
        (3, "sagemem.hierarchy", False, True),
        (5, "sagemem.tiers.l3", True, False),
        (6, "sagemem.services", True, False),
    ]
    own = _rank("sagemem.tiers.probe")
    assert [m for _, m, _, _ in found if _rank(m) > own] == [
        "sagemem.hierarchy",
        "sagemem.services",
    ]
