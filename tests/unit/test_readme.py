"""The README's commands are what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_shell_lines() -> list[str]:
    lines, inside = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = line == "```sh"
            continue
        if inside and line.startswith("uv --version"):
            lines.append(line)
    return lines


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """The last line of .ci/run is the README's test command, character for character."""
    readme_commands = _readme_shell_lines()
    assert len(readme_commands) == 2, readme_commands
    ci_last_line = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_last_line == readme_commands[1]


def test_readme_main_command_runs_the_live_demo() -> None:
    """The README's first command is the demo subcommand, whose module exists in the checkout."""
    main_command = _readme_shell_lines()[0]
    assert main_command.endswith("; uv run sagemem demo")
    assert (ROOT / "demo" / "server" / "main.py").is_file()
