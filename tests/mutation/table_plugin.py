"""A pytest plugin that runs every `CoherentL1Tier` built without a `definition` on a mutated
table, for `tests.mutation.production_sample`.

Loaded with `-p tests.mutation.table_plugin`; it does nothing unless `SAGEMEM_TEST_MUTANT`
names a mutant of the extended generator (`proofs.mutants`, e.g. `row12:wrong_target=I`) and
`SAGEMEM_TEST_MUTANT_MODE` its mode (`coherent` or `strict`). Tiers of the other mode, and
tiers given an explicit definition, keep theirs. Processes the tests start are not affected.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import pytest

from proofs.mutants import mutate_definition, select_mutants
from sagemem.spec.model import ProtocolDefinition
from sagemem.spec.vocabulary import Mode
from sagemem.tiers.l1_coherent import CoherentL1Tier

__all__ = ["MODE_VARIABLE", "MUTANT_VARIABLE", "mutated_definition"]

MUTANT_VARIABLE = "SAGEMEM_TEST_MUTANT"
MODE_VARIABLE = "SAGEMEM_TEST_MUTANT_MODE"


def mutated_definition(name: str, mode: Mode) -> ProtocolDefinition:
    """The quick-bounds definition of `mode` with the mutant called `name` applied."""
    base = dataclasses.replace(ProtocolDefinition(mode=mode), agents=2, writes=1)
    (mutant,) = select_mutants(base, [name])
    return mutate_definition(base, mutant)


def pytest_configure(config: pytest.Config) -> None:
    """Wrap `CoherentL1Tier.__init__` so that tiers of the mutant's mode run its table."""
    name = os.environ.get(MUTANT_VARIABLE, "")
    if not name:
        return
    mode = Mode(os.environ.get(MODE_VARIABLE, "coherent"))
    definition = mutated_definition(name, mode)
    original = CoherentL1Tier.__init__

    @functools.wraps(original)
    def init(self: CoherentL1Tier, *args: Any, **kwargs: Any) -> None:
        asked = kwargs.get("mode", Mode.COHERENT)
        if kwargs.get("definition") is None and asked in (mode, mode.value):
            kwargs["definition"] = definition
        original(self, *args, **kwargs)

    CoherentL1Tier.__init__ = init  # type: ignore[method-assign]
    config.stash[_ORIGINAL] = original


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put the constructor back."""
    original = config.stash.get(_ORIGINAL, None)
    if original is not None:
        CoherentL1Tier.__init__ = original  # type: ignore[method-assign]


_ORIGINAL = pytest.StashKey[Any]()
