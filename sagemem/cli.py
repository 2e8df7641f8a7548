"""The `sagemem` command line: `services up|status|down`, `check`, `grants`, `demo`, `eval`.

Each subcommand lives with the code it drives; this module only parses the first word and
dispatches, so importing it stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _checkout_root() -> Path | None:
    """The source checkout that holds `proofs/`, found through the real path of `sagemem.spec`."""
    spec_dir = (Path(__file__).parent / "spec").resolve()
    root = spec_dir.parent
    return root if (root / "proofs" / "__init__.py").is_file() else None


def _run_demo(argv: Sequence[str]) -> int:
    root = _checkout_root()
    if root is None or not (root / "demo" / "server" / "main.py").is_file():
        print(
            "sagemem demo: the live demo lives in the source checkout's demo/ folder, which an "
            "installed wheel does not ship; run it from a clone with `uv run sagemem demo`",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from demo.server.main import main as demo_main

    return demo_main(list(argv))


def _run_check(argv: Sequence[str]) -> int:
    root = _checkout_root()
    if root is None:
        print(
            "sagemem check: the model checkers live in the source checkout's proofs/ folder, "
            "which an installed wheel does not ship; run it from a clone with `uv run sagemem "
            "check`",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from proofs.cli import main as check_main

    return check_main(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sagemem` console script; returns the process exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["check"]:  # `sagemem check` owns all of its arguments, --help included
        return _run_check(arguments[1:])
    if arguments[:1] == ["demo"]:  # so does `sagemem demo`
        return _run_demo(arguments[1:])
    if arguments[:1] == ["grants"]:  # and `sagemem grants`
        from sagemem.grants import main as grants_main

        return grants_main(arguments[1:])
    if arguments[:2] == ["eval", "locomo"]:  # and `sagemem eval locomo`
        from sagemem.evaluation.locomo import main as locomo_main

        return locomo_main(arguments[2:])
    parser = argparse.ArgumentParser(
        prog="sagemem", description="sagemem: coherent tiered memory for LLM agents"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    services = commands.add_parser(
        "services", help="start, inspect or stop the embedded Redis and Postgres servers"
    )
    services.add_argument("action", choices=["up", "status", "down"])
    check = commands.add_parser(
        "check", help="model-check the coherence protocol table (see `sagemem check --help`)"
    )
    check.add_argument("check_args", nargs=argparse.REMAINDER)
    demo = commands.add_parser(
        "demo", help="run the live demo at http://localhost:8000 (see `sagemem demo --help`)"
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    grants = commands.add_parser(
        "grants",
        help="provision Redis ACL users and Postgres roles for agent capabilities "
        "(see `sagemem grants --help`)",
    )
    grants.add_argument("grants_args", nargs=argparse.REMAINDER)
    evaluation = commands.add_parser(
        "eval",
        help="evaluate the semantic tier's retrieval (`sagemem eval locomo --data PATH`, see "
        "`sagemem eval locomo --help`)",
    )
    evaluation.add_argument("benchmark", choices=["locomo"])
    args = parser.parse_args(arguments)
    if args.command == "services":
        from sagemem.services import run_services_command

        return run_services_command(args.action)
    parser.error(f"unknown command {args.command!r}")


if __name__ == "__main__":
    raise SystemExit(main())
