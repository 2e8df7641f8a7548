"""sagemem: a memory hierarchy for teams of LLM agents with a formally checked coherence protocol.

Importing `sagemem` (or `sagemem.spec`) loads no driver: the public names below are imported
on first use, so the protocol specification stays importable without redis or asyncpg.
"""

from __future__ import annotations

__version__ = "0.1.0"
