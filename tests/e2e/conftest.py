"""Fixtures for the browser tests: the integration tests' real servers, and Debian's Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest

from tests.integration.conftest import *  # noqa: F403  # the session's real servers (service_endpoints, ...)

CHROMIUM: Final = Path("/usr/bin/chromium")
_INSTALL_TIMEOUT_S: Final = 900


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    command = ["apt-get", *args]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            pytest.fail(
                f"{CHROMIUM} is missing and this user cannot install it (not root, no sudo): "
                "run `apt-get install -y chromium` as root"
            )
        command = ["sudo", "-n", *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=_INSTALL_TIMEOUT_S,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
    )


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    """Debian's Chromium, installed with apt-get if it is missing (the test fails if it can't)."""
    if not CHROMIUM.exists():
        result = _apt_get("install", "-y", "chromium")
        if result.returncode != 0:
            _apt_get("update")
            result = _apt_get("install", "-y", "chromium")
        if result.returncode != 0 or not CHROMIUM.exists():
            pytest.fail(
                f"could not install Debian's chromium with apt-get (exit {result.returncode}): "
                f"{result.stderr[-2000:]}"
            )
    return CHROMIUM
