"""`sagemem reindex`: index the home entries that search cannot find, from a shell.

A hierarchy with the semantic tier indexes every write it commits, and indexes the home's
unindexed entries in the background when it connects (`MemoryHierarchy.reindex`). Entries
written to L3 by a program without the semantic tier stay missing from searches until then;
this command indexes them now, with the embedder the application searches with (an index row
embedded by another model would rank wrongly), and prints how many it indexed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from sagemem.embedding import Embedder
from sagemem.errors import ConfigurationError, SageMemError
from sagemem.evaluation.locomo import build_embedder
from sagemem.hierarchy import MemoryHierarchy
from sagemem.tiers.dram import DRAMTier
from sagemem.tiers.l3 import L3Tier

__all__ = ["main", "reindex"]

EMBEDDER_CHOICES = ("hashing", "minilm", "wordllama", "openai")


async def reindex(
    namespace: str,
    *,
    postgres_dsn: str | None = None,
    schema: str = "sagemem",
    embedder: Embedder | None = None,
) -> int:
    """Index the live L3 entries of `namespace` that have no index row for their version;
    return how many (the embedder must be the application's; default `HashingEmbedder`)."""
    tiers = [
        L3Tier(postgres_dsn, namespace=namespace, schema=schema),
        DRAMTier(postgres_dsn, namespace=namespace, schema=schema, embedder=embedder),
    ]
    async with MemoryHierarchy(tiers, owns_tiers=True, reindex_on_connect=False) as hierarchy:
        return await hierarchy.reindex()


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Index the entries of a namespace's L3 home that have no search index row "
        "for their current version (written by a program without the semantic tier, or by a "
        "writer that stopped between its commit and its index write), with the embedder the "
        "application searches with. Prints how many entries were indexed.",
        epilog="exit status: 0 done (the count is printed); 1 a server failed (the reason is "
        "printed); 2 a usage error or a bad setting.",
    )
    parser.add_argument("--namespace", required=True, help="the namespace to repair")
    parser.add_argument("--schema", default="sagemem", help="the Postgres schema (default sagemem)")
    parser.add_argument(
        "--embedder",
        choices=EMBEDDER_CHOICES,
        default="hashing",
        help="the application's embedder (default hashing, sagemem's default)",
    )
    parser.add_argument("--embedding-model", help="model name for --embedder openai")
    parser.add_argument("--embedding-dimensions", type=int, help="its vector size")
    parser.add_argument(
        "--postgres-dsn",
        "--dsn",
        dest="postgres_dsn",
        help="Postgres DSN (default: SAGEMEM_POSTGRES_DSN or embedded)",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "sagemem reindex") -> int:
    """Run `sagemem reindex`; returns the exit status."""
    args = _parser(prog).parse_args(argv)
    try:
        embedder = build_embedder(args)
        indexed = asyncio.run(
            reindex(
                args.namespace,
                postgres_dsn=args.postgres_dsn,
                schema=args.schema,
                embedder=embedder,
            )
        )
    except ConfigurationError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    except SageMemError as error:
        print(f"{prog}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"indexed {indexed} entries of namespace {args.namespace!r}")
    return 0
