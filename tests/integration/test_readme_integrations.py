"""The README's LangGraph and MCP snippets run as written, on the session's servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sagemem.services import POSTGRES_DSN_ENV, REDIS_URL_ENV, ServiceEndpoints

ROOT = Path(__file__).resolve().parents[2]
SNIPPET_TIMEOUT_S = 120.0


def _python_blocks_under(heading: str) -> list[str]:
    """The ```python blocks of the README section whose `## ` heading starts with `heading`."""
    blocks: list[str] = []
    in_section = in_block = False
    lines: list[str] = []
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            in_section = line.startswith(f"## {heading}")
        elif in_section and line == "```python":
            in_block, lines = True, []
        elif in_block and line == "```":
            in_block = False
            blocks.append("\n".join(lines) + "\n")
        elif in_block:
            lines.append(line)
    return blocks


@pytest.mark.parametrize(
    ("heading", "expected_lines"),
    [
        ("LangGraph", ["{'theme': 'dark'}", "prefs", "{'n': 20}"]),
        ("MCP", ["{'step': 1}"]),
    ],
)
def test_readme_snippet_runs_and_prints_what_its_comments_say(
    service_endpoints: ServiceEndpoints, heading: str, expected_lines: list[str]
) -> None:
    """Each section's one Python snippet exits 0 and prints the values its comments show."""
    blocks = _python_blocks_under(heading)
    assert len(blocks) == 1, f"the README section {heading!r} has {len(blocks)} Python snippets"
    environment = {
        **os.environ,
        REDIS_URL_ENV: service_endpoints.redis_url,
        POSTGRES_DSN_ENV: service_endpoints.postgres_dsn,
    }
    finished = subprocess.run(
        [sys.executable, "-c", blocks[0]],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=SNIPPET_TIMEOUT_S,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    printed = finished.stdout.splitlines()
    assert printed[: len(expected_lines)] == expected_lines
    if heading == "MCP":
        assert printed[1].startswith("True Error executing tool memory_put: VersionConflict: ")
