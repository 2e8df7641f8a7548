"""The `sagemem` command line: `services up|status|down`, `check`, `grants`, `demo`, `mcp`,
`reindex`, `eval` and `bench`.

Each subcommand lives with the code it drives; this module only parses the first word and
dispatches, so importing it stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from sagemem import __version__

__all__ = ["main"]


def _checkout_root() -> Path | None:
    """The source checkout that holds `proofs/`, found through the real path of `sagemem.spec`."""
    spec_dir = (Path(__file__).parent / "spec").resolve()
    root = spec_dir.parent
    return root if (root / "proofs" / "__init__.py").is_file() else None


def _missing_extra(command: str, extra: str, error: ImportError) -> int:
    """Say which extra a subcommand needs when one of its libraries is not installed."""
    print(
        f"sagemem {command}: {error.name or 'a library'} is not installed; install the "
        f'"{extra}" extra: pip install "sagemem[{extra}]" (in a clone, `uv sync` installs it)',
        file=sys.stderr,
    )
    return 2


def _run_shipped(command: str, module: str, argv: Sequence[str]) -> int:
    """Run `module.main(argv)`, a part the wheel ships whose libraries come with the extra of
    the same name as `command` (`sagemem[check]`, `sagemem[demo]`); say so if one is missing."""
    try:
        main_of: Callable[[list[str]], int] = importlib.import_module(module).main
    except ImportError as error:
        if error.name is not None and error.name.startswith("sagemem"):
            raise
        return _missing_extra(command, command, error)
    return main_of(list(argv))


def _run_bench(argv: Sequence[str]) -> int:
    root = _checkout_root()
    if root is None or not (root / "benchmarks" / "run_all.py").is_file():
        print(
            "sagemem bench: the benchmarks live in the source checkout's benchmarks/ folder, "
            "which an installed wheel does not ship; run it from a clone with `uv run sagemem "
            "bench` (or `uv run python -m benchmarks.run_all`)",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.run_all import main as bench_main

    return bench_main(list(argv))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sagemem")
    except PackageNotFoundError:  # imported from a source tree that is not installed
        return __version__


_SERVICES_ACTIONS: Final = {
    "up": (
        "start the embedded servers, or reuse them if they run",
        "Start the embedded Redis (Valkey) and Postgres (with pgvector), or reuse the ones "
        "already running, and print shell lines that export SAGEMEM_REDIS_URL and "
        'SAGEMEM_POSTGRES_DSN: eval "$(sagemem services up)". Progress goes to stderr. With '
        "--cluster N [--replicas R], a local Valkey cluster of N primaries with R replicas each "
        "takes the single Redis's place, and SAGEMEM_REDIS_URL names one of its primaries.",
        "exit status: 0 the servers run; 1 they could not be started (the reason is printed); "
        "2 a bad --cluster/--replicas value (nothing is started).",
    ),
    "status": (
        "show whether the embedded servers run, their pids and addresses",
        "Show the runtime directory and, for each embedded server, whether it runs, its pid "
        "and its address (passwords shown as ***).",
        "exit status: 0 both servers run (or Postgres and the cluster); 1 one or both do not "
        "(not started, or stale); "
        "2 the status could not be read.",
    ),
    "down": (
        "stop the embedded servers",
        "Stop the embedded Redis and Postgres and wait until their processes are gone. The "
        "Postgres data directory is kept for the next `up`. With --cluster, only the "
        "embedded Redis cluster is stopped.",
        "exit status: 0 stopped, or nothing was running; 1 they could not be stopped.",
    ),
}


def _add_services_parser(commands: Any) -> None:
    services = commands.add_parser(
        "services",
        help="start, inspect or stop the embedded Redis and Postgres servers",
        description="The embedded Redis and Postgres servers that sagemem starts when "
        "SAGEMEM_REDIS_URL / SAGEMEM_POSTGRES_DSN are not set, shared by every process of "
        "this user. `sagemem services ACTION --help` describes an action.",
        epilog="exit status: 0 success; 1 `status` found a server not running, or `up`/`down` "
        "failed; 2 a usage error (or `status` could not read the record).",
    )
    actions = services.add_subparsers(dest="action", required=True, metavar="ACTION")
    parsers = {
        name: actions.add_parser(name, help=summary, description=description, epilog=epilog)
        for name, (summary, description, epilog) in _SERVICES_ACTIONS.items()
    }
    parsers["up"].add_argument(
        "--cluster",
        type=int,
        metavar="N",
        help="start a Redis (Valkey) cluster of N primaries (3 or more) instead of the single "
        "node; SAGEMEM_REDIS_URL then names its first primary",
    )
    parsers["up"].add_argument(
        "--replicas",
        type=int,
        metavar="R",
        help="with --cluster: R replicas per primary (0-4, default 0)",
    )
    parsers["down"].add_argument(
        "--cluster",
        action="store_true",
        help="stop only the Redis cluster; the single-node Redis and Postgres keep running",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sagemem` console script; returns the process exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["check"]:  # `sagemem check` owns all of its arguments, --help included
        return _run_shipped("check", "sagemem.proofs.cli", arguments[1:])
    if arguments[:1] == ["demo"]:  # so does `sagemem demo`
        return _run_shipped("demo", "sagemem.demo.server.main", arguments[1:])
    if arguments[:1] == ["bench"]:  # and `sagemem bench` (python -m benchmarks.run_all)
        return _run_bench(arguments[1:])
    if arguments[:1] == ["grants"]:  # and `sagemem grants`
        from sagemem.grants import main as grants_main

        return grants_main(arguments[1:])
    if arguments[:1] == ["mcp"]:  # and `sagemem mcp` (needs the extra `sagemem[mcp]`)
        try:
            from sagemem.integrations.mcp_server import main as mcp_main
        except ModuleNotFoundError as error:
            if error.name is None or error.name.split(".")[0] not in ("mcp", "mcp_types"):
                raise
            print(
                f"sagemem mcp: the MCP SDK is not installed ({error}); install the extra: "
                "pip install 'sagemem[mcp]'",
                file=sys.stderr,
            )
            return 2
        return mcp_main(arguments[1:])
    if arguments[:1] == ["reindex"]:  # and `sagemem reindex`
        from sagemem.reindex import main as reindex_main

        return reindex_main(arguments[1:])
    if arguments[:2] == ["eval", "locomo"]:  # and `sagemem eval locomo`
        from sagemem.evaluation.locomo import main as locomo_main

        return locomo_main(arguments[2:])
    parser = argparse.ArgumentParser(
        prog="sagemem",
        description="sagemem: coherent tiered memory for LLM agents",
        epilog="`sagemem COMMAND --help` describes a command and its exit statuses; every "
        "command exits 0 on success and 2 on a usage error.",
    )
    parser.add_argument("--version", action="version", version=f"sagemem {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_services_parser(commands)
    check = commands.add_parser(
        "check", help="model-check the coherence protocol table (see `sagemem check --help`)"
    )
    check.add_argument("check_args", nargs=argparse.REMAINDER)
    demo = commands.add_parser(
        "demo", help="run the live demo at http://localhost:8000 (see `sagemem demo --help`)"
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    bench = commands.add_parser(
        "bench",
        help="run the agent workloads on sagemem and its baselines, write a report "
        "(see `sagemem bench --help`)",
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    grants = commands.add_parser(
        "grants",
        help="provision Redis ACL users and Postgres roles for agent capabilities "
        "(see `sagemem grants --help`)",
    )
    grants.add_argument("grants_args", nargs=argparse.REMAINDER)
    mcp = commands.add_parser(
        "mcp", help="serve one namespace's memory as MCP tools (see `sagemem mcp --help`)"
    )
    mcp.add_argument("mcp_args", nargs=argparse.REMAINDER)
    reindex = commands.add_parser(
        "reindex",
        help="index L3 entries that search cannot find yet (see `sagemem reindex --help`)",
    )
    reindex.add_argument("reindex_args", nargs=argparse.REMAINDER)
    evaluation = commands.add_parser(
        "eval",
        help="evaluate the semantic tier's retrieval (`sagemem eval locomo --data PATH`, see "
        "`sagemem eval locomo --help`)",
        epilog="exit status: 0 the evaluation ran; 1 a server or the data failed; 2 a usage error.",
    )
    evaluation.add_argument("benchmark", choices=["locomo"])
    args = parser.parse_args(arguments)
    if args.command == "services":
        from sagemem.services import run_services_command

        if args.action == "up":
            return run_services_command("up", cluster=args.cluster, replicas=args.replicas)
        if args.action == "down":
            return run_services_command("down", only_cluster=args.cluster)
        return run_services_command(args.action)
    parser.error(f"unknown command {args.command!r}")


if __name__ == "__main__":
    raise SystemExit(main())
