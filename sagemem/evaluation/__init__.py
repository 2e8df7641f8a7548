"""Evaluations of sagemem's retrieval on public data sets (`sagemem eval ...`)."""

from __future__ import annotations

__all__: list[str] = []
