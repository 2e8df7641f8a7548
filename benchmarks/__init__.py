"""Benchmarks: each measures sagemem beside a baseline in the same run and reports ratios."""
