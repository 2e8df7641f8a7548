"""Every Python block of README.md runs as written, as a program, against embedded servers.

The blocks are read from README.md itself (not copies), each saved to a file in an empty
directory and run with this interpreter, with no Redis or Postgres address in the environment
and a runtime directory of its own: the first block starts the embedded servers as on a fresh
machine, the others reuse them, and the module stops them at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from sagemem.services import (
    POSTGRES_DSN_ENV,
    REDIS_URL_ENV,
    RUNTIME_DIR_ENV,
    EmbeddedServices,
    create_private_runtime_dir,
)
from tests.integration.conftest import stop_and_remove

ROOT: Final = Path(__file__).resolve().parents[2]
PROGRAM_TIMEOUT_S: Final = 120.0
_FENCE: Final = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_HARD_CODED_ADDRESS: Final = re.compile(r"localhost|127\.0\.0\.1|redis://|postgres(ql)?://")


def readme_python_blocks() -> list[str]:
    """The text of every ```python block of README.md, in order."""
    return _FENCE.findall((ROOT / "README.md").read_text())


BLOCKS: Final = readme_python_blocks()


@pytest.fixture(scope="module")
def fresh_services() -> Iterator[EmbeddedServices]:
    """A runtime directory no server runs in yet; whatever the programs start is stopped after."""
    services = EmbeddedServices(create_private_runtime_dir())
    try:
        yield services
    finally:
        stop_and_remove(services)


def test_readme_has_the_python_blocks_this_test_runs() -> None:
    """The extraction finds the README's programs (quickstart, connect, coherent, scoped)."""
    assert len(BLOCKS) >= 4, BLOCKS
    assert all("asyncio.run(main())" in block for block in BLOCKS[:4])


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs_as_a_program(
    block: str, fresh_services: EmbeddedServices, tmp_path: Path
) -> None:
    """The block names no server address and exits 0 as a script on the embedded servers."""
    assert _HARD_CODED_ADDRESS.search(block) is None, block
    program = tmp_path / "program.py"
    program.write_text(block)
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in (REDIS_URL_ENV, POSTGRES_DSN_ENV, "PYTHONPATH")
    }
    env[RUNTIME_DIR_ENV] = str(fresh_services.runtime_dir)
    result = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROGRAM_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout.strip(), "the program printed nothing"
    assert fresh_services.status().running, "the program did not use the embedded servers"
