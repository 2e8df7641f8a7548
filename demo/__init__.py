"""Runnable demonstrations of sagemem against real servers."""
