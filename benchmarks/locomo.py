"""LoCoMo evidence retrieval of the semantic tier: `python -m benchmarks.locomo --data PATH`.

The same evaluation as `sagemem eval locomo` (`sagemem.evaluation.locomo`, where the method is
described); `--help` lists the options. Results and commands are in docs/benchmarks.md.
"""

from __future__ import annotations

from sagemem.evaluation.locomo import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m benchmarks.locomo"))
