"""Adapters that put sagemem behind the interfaces agents already use.

`sagemem.integrations.langgraph` (extra `sagemem[langgraph]`) is a LangGraph `BaseStore`;
`sagemem.integrations.mcp_server` (extra `sagemem[mcp]`) is the `sagemem mcp` server. Each
imports its framework, so import the submodule you need; this package imports neither.
"""

from __future__ import annotations

__all__: list[str] = []
