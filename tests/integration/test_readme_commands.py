"""The README's commands find or install uv on a Python that refuses pip installs (PEP 668).

The commands are read from README.md and run by `sh` in an empty directory whose PATH holds
only stand-ins: a `python3` that refuses `pip install` into itself or `--user` with pip's
`externally-managed-environment` error (as Debian's, Ubuntu's and Homebrew's do) but, like pip,
accepts `--target DIR` and puts a `uv` executable in `DIR/bin`; that `uv` records its arguments.
So the shell logic is what is tested: the install goes to `.uv/`, `.uv/bin` is found on PATH,
a second run reuses it, and a failed install stops the command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest

from tests.unit.test_readme import readme_shell_lines

TIMEOUT_S: Final = 60.0

_FAKE_PYTHON: Final = r"""#!/bin/sh
# A PEP 668 python3 stand-in: only `-m pip install ... --target DIR uv` succeeds.
echo "python3 $*" >> "$LOG"
[ "$FAIL_PIP" = 1 ] && { echo "python3: No module named pip" >&2; exit 1; }
target=""
previous=""
for argument in "$@"; do
    [ "$previous" = "--target" ] && target="$argument"
    previous="$argument"
done
if [ -z "$target" ]; then
    echo "error: externally-managed-environment" >&2
    exit 1
fi
mkdir -p "$target/bin"
cat > "$target/bin/uv" <<'UV'
#!/bin/sh
echo "uv $*" >> "$LOG"
UV
chmod +x "$target/bin/uv"
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A clone stand-in directory and an environment whose PATH has only the stand-ins."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("mkdir", "chmod", "cat"):
        found = shutil.which(name)
        assert found is not None, name
        (tools / name).symlink_to(found)
    python = tools / "python3"
    python.write_text(_FAKE_PYTHON)
    python.chmod(0o755)
    clone = tmp_path / "clone"
    clone.mkdir()
    env = {"PATH": str(tools), "LOG": str(tmp_path / "log"), "HOME": str(tmp_path / "home")}
    return clone, env


def _run(command: str, clone: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    shell = shutil.which("sh")
    assert shell is not None
    return subprocess.run(
        [shell, "-c", command],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _log(env: dict[str, str]) -> list[str]:
    path = Path(env["LOG"])
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("which", [0, 1], ids=["demo", "tests"])
def test_readme_command_installs_uv_into_the_clone_and_runs_it(
    sandbox: tuple[Path, dict[str, str]], which: int
) -> None:
    """Without uv, the command pip-installs it with --target .uv and runs `.uv/bin/uv`; run again,
    it reuses that uv without calling pip."""
    clone, env = sandbox
    command = readme_shell_lines()[which]
    first = _run(command, clone, env)
    assert first.returncode == 0, first.stderr
    assert (clone / ".uv" / "bin" / "uv").is_file()
    log = _log(env)
    assert log[0] == "python3 -m pip install -q --target .uv uv"
    assert log[1] == ("uv run sagemem demo" if which == 0 else "uv sync --frozen --all-groups")
    second = _run(command, clone, env)
    assert second.returncode == 0, second.stderr
    assert [line for line in _log(env) if line.startswith("python3")] == [log[0]]


def test_readme_command_stops_when_uv_cannot_be_installed(
    sandbox: tuple[Path, dict[str, str]],
) -> None:
    """A python3 without pip: the command fails with pip's message and never calls uv."""
    clone, env = sandbox
    result = _run(readme_shell_lines()[0], clone, {**env, "FAIL_PIP": "1"})
    assert result.returncode != 0
    assert "No module named pip" in result.stderr
    assert "uv: not found" not in result.stderr
    assert "command not found" not in result.stderr
    assert _log(env) == ["python3 -m pip install -q --target .uv uv"]


def test_readme_command_uses_a_uv_already_on_path(sandbox: tuple[Path, dict[str, str]]) -> None:
    """With uv on PATH, python3 is never called and nothing is installed into the clone."""
    clone, env = sandbox
    tools = Path(env["PATH"])
    uv = tools / "uv"
    uv.write_text('#!/bin/sh\necho "uv $*" >> "$LOG"\n')
    uv.chmod(0o755)
    result = _run(readme_shell_lines()[0], clone, env)
    assert result.returncode == 0, result.stderr
    assert _log(env) == ["uv --version", "uv run sagemem demo"]
    assert not (clone / ".uv").exists()
    assert os.listdir(clone) == []
