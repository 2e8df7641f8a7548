"""LangGraph's own store tests, run unmodified against `SageMemStore`.

The tests are not copied into this repository: `upstream_store_tests()` takes the sdist of the
installed `langgraph-checkpoint` (its version must equal `PINNED_VERSION`; the dev group pins
it), downloads it from the URL that uv.lock records for that version, checks the file against
the lock's sha256, and caches `tests/test_store.py` and `tests/embed_test_utils.py` from it in
pytest's cache directory. It then imports `test_store.py` with one substitution: while the
module runs its imports, `langgraph.store.memory.InMemoryStore` is `SageMemStore` (and the
upstream `tests.embed_test_utils` helper is importable under that name); both are put back
before any test runs, so other tests see LangGraph's real `InMemoryStore`. The module's tests
and fixtures are then collected from `test_langgraph_upstream_store.py`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import os
import sys
import tarfile
import tomllib
import types
import urllib.request
from pathlib import Path
from typing import Final

import pytest

from sagemem.services import ServiceEndpoints

__all__ = ["PINNED_VERSION", "upstream_store_tests"]

PINNED_VERSION: Final = "4.3.2"
_PACKAGE: Final = "langgraph-checkpoint"
_FILES: Final = ("tests/test_store.py", "tests/embed_test_utils.py")
_ROOT: Final = Path(__file__).resolve().parents[3]
_CACHE_DIR: Final = _ROOT / ".pytest_cache" / "upstream" / f"{_PACKAGE}-{PINNED_VERSION}"
_DOWNLOAD_TIMEOUT_S: Final = 60.0


def _locked_sdist() -> tuple[str, str]:
    """The sdist URL and sha256 that uv.lock records for the pinned version."""
    lock = tomllib.loads((_ROOT / "uv.lock").read_text(encoding="utf-8"))
    for package in lock["package"]:
        if package["name"] == _PACKAGE and package["version"] == PINNED_VERSION:
            sdist = package["sdist"]
            algorithm, _, digest = str(sdist["hash"]).partition(":")
            assert algorithm == "sha256", f"uv.lock hashes the sdist with {algorithm}"
            return str(sdist["url"]), digest
    raise AssertionError(f"uv.lock has no {_PACKAGE} {PINNED_VERSION}; run `uv lock`")


def _fetch() -> Path:
    """The cache directory holding the pinned sdist's store tests (downloaded once)."""
    if all((_CACHE_DIR / name).is_file() for name in _FILES):
        return _CACHE_DIR
    url, sha256 = _locked_sdist()
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        archive = response.read()
    actual = hashlib.sha256(archive).hexdigest()
    assert actual == sha256, f"{url} has sha256 {actual}, uv.lock says {sha256}"
    top = f"langgraph_checkpoint-{PINNED_VERSION}"
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for name in _FILES:
            member = tar.extractfile(f"{top}/{name}")
            assert member is not None, f"the sdist has no {name}"
            target = _CACHE_DIR / name
            target.parent.mkdir(parents=True, exist_ok=True)
            # Written aside and renamed: a concurrent run never reads a half-written file.
            partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
            partial.write_bytes(member.read())
            partial.replace(target)
    return _CACHE_DIR


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_loaded: types.ModuleType | None = None


def upstream_store_tests() -> types.ModuleType:
    """LangGraph's `tests/test_store.py`, imported with `InMemoryStore` bound to `SageMemStore`."""
    global _loaded
    if _loaded is not None:
        return _loaded
    installed = importlib.metadata.version(_PACKAGE)
    assert installed == PINNED_VERSION, (
        f"{_PACKAGE} {installed} is installed but these tests are pinned to {PINNED_VERSION}; "
        "run `uv sync --frozen`"
    )
    directory = _fetch()
    import langgraph.store.memory as memory

    from sagemem.integrations.langgraph import SageMemStore

    helper_name = "tests.embed_test_utils"
    saved_store = memory.InMemoryStore
    saved_helper = sys.modules.get(helper_name)
    try:
        # setattr: mypy refuses assigning to a class name, and this swap is the point.
        setattr(memory, "InMemoryStore", SageMemStore)  # noqa: B010
        sys.modules[helper_name] = _load(
            "langgraph_upstream_embed_test_utils", directory / "tests" / "embed_test_utils.py"
        )
        _loaded = _load("langgraph_upstream_test_store", directory / "tests" / "test_store.py")
    finally:
        setattr(memory, "InMemoryStore", saved_store)  # noqa: B010
        if saved_helper is None:
            sys.modules.pop(helper_name, None)
        else:
            sys.modules[helper_name] = saved_helper
    assert _loaded.InMemoryStore is SageMemStore
    return _loaded


@pytest.fixture(autouse=True)
def _servers(service_endpoints: ServiceEndpoints) -> ServiceEndpoints:
    """Every upstream test runs with SAGEMEM_* naming the session's servers."""
    return service_endpoints
