"""`sagemem mcp` on the command line, without servers: help, and a missing SDK (no I/O)."""

from __future__ import annotations

import sys

import pytest

from sagemem.cli import main


def test_sagemem_mcp_without_the_sdk_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the MCP SDK unimportable, `sagemem mcp` exits 2 and names `sagemem[mcp]`."""
    for name in [name for name in sys.modules if name.split(".")[0] in ("mcp", "mcp_types")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "mcp", None)
    monkeypatch.delitem(sys.modules, "sagemem.integrations.mcp_server", raising=False)
    assert main(["mcp"]) == 2
    assert "pip install 'sagemem[mcp]'" in capsys.readouterr().err


def test_sagemem_mcp_help_lists_the_transport_and_scope_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sagemem mcp --help` documents the namespace, agent, transport and scope options."""
    with pytest.raises(SystemExit) as exited:
        main(["mcp", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--namespace", "--agent-id", "--transport", "--read-prefix", "--read-only"):
        assert option in help_text
