"""One module tree under two names: the repository's top-level folders (`spec`, `proofs`,
`demo`) are importable by their short names in a clone, and ship inside the wheel as
`sagemem.spec`, `sagemem.proofs` and `sagemem.demo`. `alias_package` makes the short name an
alias of the long one, so `proofs.explore is sagemem.proofs.explore` and each class exists once.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType

__all__ = ["alias_package"]


class _AliasLoader(importlib.abc.InspectLoader):
    """Loads `real` (the long name) and hands that very module out under the short name."""

    def __init__(self, real: str) -> None:
        self._real = real
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self._real)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the short name's spec on the module: give its own back.
        module.__spec__ = self._spec

    def _real_loader(self) -> importlib.abc.InspectLoader:
        spec = importlib.util.find_spec(self._real)
        if spec is None or not isinstance(spec.loader, importlib.abc.InspectLoader):
            raise ImportError(f"{self._real} has no source to run", name=self._real)
        return spec.loader

    def get_code(self, fullname: str) -> CodeType | None:
        """The long module's code, so `python -m <short>.<module>` runs (runpy asks for it)."""
        return self._real_loader().get_code(self._real)

    def get_source(self, fullname: str) -> str | None:
        """The long module's source (tracebacks, inspect)."""
        return self._real_loader().get_source(self._real)

    def is_package(self, fullname: str) -> bool:
        """Whether the long module is a package (runpy asks)."""
        return self._real_loader().is_package(self._real)


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds `short.X` as `long.X` (only submodules; the package itself is aliased directly)."""

    def __init__(self, short: str, long: str) -> None:
        self._short = short
        self._long = long

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(self._short + "."):
            return None
        real = self._long + fullname[len(self._short) :]
        found = importlib.util.find_spec(real)
        if found is None:
            return None
        # The long module's location, so `python -m <short>.<module>` gets its `__file__`.
        spec = importlib.machinery.ModuleSpec(
            fullname,
            _AliasLoader(real),
            origin=found.origin,
            is_package=found.submodule_search_locations is not None,
        )
        spec.has_location = found.has_location
        if found.submodule_search_locations is not None:
            spec.submodule_search_locations = list(found.submodule_search_locations)
        return spec


def alias_package(short: str, long: str) -> None:
    """Make `short` (being imported now) the package `long`, submodules included: called from
    the package's `__init__` when it runs under its short name."""
    package = importlib.import_module(long)
    if not any(
        isinstance(finder, _AliasFinder) and finder._short == short for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _AliasFinder(short, long))
    for name, module in list(sys.modules.items()):
        if name.startswith(long + "."):
            sys.modules.setdefault(short + name[len(long) :], module)
    sys.modules[short] = package
