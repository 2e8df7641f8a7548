"""Settings shared by every test folder.

Tests under `tests/integration/` are marked `integration` automatically, so
`pytest -m "not integration"` runs everything that needs no server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected from tests/integration with `integration`."""
    for item in items:
        if _INTEGRATION_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)
