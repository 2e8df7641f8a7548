"""The README's commands are what CI runs, and they work on a Python that refuses pip installs."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Final

ROOT = Path(__file__).resolve().parents[2]
# Both commands start by finding uv, or installing it into the clone's .uv/ (PEP 668 allows
# `pip install --target`, not a plain or --user install into an externally managed Python).
BOOTSTRAP: Final = (
    'export PATH="$PWD/.uv/bin:$PATH"; uv --version >/dev/null 2>&1 || '
    "python3 -m pip install -q --target .uv uv && "
)


def readme_shell_lines() -> list[str]:
    """The README's two shell commands (the lines of its ```sh blocks that start like BOOTSTRAP)."""
    lines, inside = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = line == "```sh"
            continue
        if inside and line.startswith(BOOTSTRAP[:20]):
            lines.append(line)
    return lines


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """The last line of .ci/run is the README's test command, character for character."""
    readme_commands = readme_shell_lines()
    assert len(readme_commands) == 2, readme_commands
    ci_last_line = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_last_line == readme_commands[1]


def test_readme_commands_install_uv_without_touching_the_system_python() -> None:
    """Both commands install a missing uv with `pip install --target .uv`, never system-wide."""
    for command in readme_shell_lines():
        assert command.startswith(BOOTSTRAP), command
        assert "--break-system-packages" not in command
        rest = command.removeprefix(BOOTSTRAP)
        assert ";" not in rest, "a failed install or step must stop the command (&&, not ;)"
    assert ".uv/" in (ROOT / ".gitignore").read_text().splitlines()


def test_readme_main_command_runs_the_live_demo() -> None:
    """The README's first command is the demo subcommand, whose module exists in the checkout."""
    main_command = readme_shell_lines()[0]
    assert main_command == BOOTSTRAP + "uv run sagemem demo"
    assert (ROOT / "demo" / "server" / "main.py").is_file()


def test_demo_command_installs_no_development_tools() -> None:
    """`uv run` installs only the default groups (demo), and the test command adds dev itself."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    default_groups = project["tool"]["uv"]["default-groups"]
    assert "dev" not in default_groups
    assert "demo" in default_groups
    test_command = readme_shell_lines()[1]
    assert "uv sync --frozen --all-groups &&" in test_command
