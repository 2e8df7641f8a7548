"""`import spec` and `import sagemem.spec` give one module tree, whichever comes first."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import {first}, {second}
import spec.model, spec.table, spec.vocabulary, spec.invariants, spec.conformance
import sagemem.spec.model
assert spec.L1State is sagemem.spec.L1State, "two L1State classes"
assert spec.TABLE is sagemem.spec.TABLE, "two tables"
assert spec is sagemem.spec, "two packages"
for name in ("model", "table", "vocabulary", "invariants", "conformance"):
    assert sys.modules["spec." + name] is sys.modules["sagemem.spec." + name], name
from spec.model import ProtocolDefinition
from sagemem.spec.model import ProtocolDefinition as Same
assert ProtocolDefinition is Same
print("one tree")
"""


@pytest.mark.parametrize(("first", "second"), [("spec", "sagemem.spec"), ("sagemem.spec", "spec")])
def test_spec_and_sagemem_spec_are_the_same_modules(first: str, second: str) -> None:
    """In a fresh interpreter, either import order yields the same classes and table."""
    code = "import sys\n" + CHECK.format(first=first, second=second)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "one tree"
