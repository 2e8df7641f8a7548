"""Search latency of the semantic tier over 10,000 entries: `python -m benchmarks.semantic_search`.

Fills one namespace of a `DRAMTier` with `--entries` entries (default 10,000), then runs
`--queries` top-10 searches and reports p50/p95/p99 of:

- `search`: `DRAMTier.search(question, limit=10)` as an application calls it, the query's
  embedding included;
- `search (vector given)`: the same call with the query's vector already computed (the
  embedder answers from a table), i.e. the tier's own cost: one SQL statement, both rankings,
  fusion, decoding;
- `embed one query`: the embedder alone.

With `--data` (a LoCoMo release) the entries are LoCoMo's turns (with the previous turn as
context, as `sagemem eval locomo` stores them), observations and session summaries, topped up
to `--entries` with turns stored a second time under other keys, and the queries are LoCoMo's
questions; without it both are synthetic sentences from a fixed Zipf-distributed vocabulary.
Entries are embedded in batches beforehand, so filling takes a minute rather than one model
call per write. The namespace lives in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from sagemem.embedding import Embedder, HashingEmbedder
from sagemem.evaluation.locomo import (
    EMBEDDERS,
    EvaluationOptions,
    build_embedder,
    conversation_entries,
    drop_schema,
    entry_text,
    load_conversations,
)
from sagemem.tiers.dram import SEARCH_MODES, DRAMTier, SearchMode
from sagemem.values import JSONValue


class PrecomputedEmbedder:
    """Answers from a table of vectors computed beforehand; other texts go to `fallback`."""

    def __init__(self, fallback: Embedder, table: dict[str, list[float]]) -> None:
        self.fallback = fallback
        self.table = table

    def __repr__(self) -> str:
        return f"PrecomputedEmbedder({self.fallback!r}, {len(self.table)} texts)"

    @property
    def dimensions(self) -> int:
        """The fallback's dimensions."""
        return self.fallback.dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors from the table, or from the fallback for texts not in it."""
        missing = [text for text in texts if text not in self.table]
        if missing:
            for text, vector in zip(missing, await self.fallback.embed(missing), strict=True):
                self.table[text] = vector
        return [self.table[text] for text in texts]


def _synthetic(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu"]
    vocabulary = sorted(
        {"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(6000)}
    )
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    return [" ".join(rng.choices(vocabulary, weights, k=rng.randint(8, 30))) for _ in range(count)]


def corpus(
    data: Path | None, entries: int, queries: int, seed: int
) -> tuple[list[tuple[str, JSONValue]], list[str]]:
    """(key, value) pairs to store and query texts."""
    if data is None:
        texts = _synthetic(entries + queries, seed)
        stored: list[tuple[str, JSONValue]] = [
            (f"doc:{index}", text) for index, text in enumerate(texts[:entries])
        ]
        return stored, texts[entries:]
    conversations = load_conversations(data)
    options = EvaluationOptions(observations=True, summaries=True)
    stored = []
    for index, conversation in enumerate(conversations):
        stored += [
            (f"{index}:{key}", value) for key, value in conversation_entries(conversation, options)
        ]
    turns = [(key, value) for key, value in stored if ":turn:" in key]
    copy = 0
    while len(stored) < entries:
        key, value = turns[copy % len(turns)]
        stored.append((f"{key}:copy{copy // len(turns)}", value))
        copy += 1
    questions = [q.text for c in conversations for q in c.questions]
    random.Random(seed).shuffle(questions)
    return stored[:entries], questions[:queries]


def _summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 3)

    return {"p50": round(statistics.median(ordered), 3), "p95": at(0.95), "p99": at(0.99)}


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Fill, warm up, measure; return the summaries."""
    embedder: Embedder = HashingEmbedder() if args.embedder == "hashing" else build_embedder(args)
    stored, queries = corpus(args.data, args.entries, args.queries, args.seed)
    print(f"{len(stored)} entries, {len(queries)} queries, {embedder!r}", file=sys.stderr)
    texts = sorted({entry_text(value) for _, value in stored})
    table: dict[str, list[float]] = {}
    started = time.perf_counter()
    for start in range(0, len(texts), 256):
        batch = texts[start : start + 256]
        table.update(zip(batch, await embedder.embed(batch), strict=True))
        print(f"embedded {len(table)}/{len(texts)}", file=sys.stderr, flush=True)
    embed_s = time.perf_counter() - started
    schema = f"search_bench_{uuid.uuid4().hex[:10]}"
    precomputed = PrecomputedEmbedder(embedder, table)
    mode: SearchMode = args.mode
    try:
        async with DRAMTier(
            args.dsn,
            namespace="bench",
            schema=schema,
            embedder=precomputed,
            text_of=entry_text,
        ) as filling:
            started = time.perf_counter()
            for index, (key, value) in enumerate(stored):
                await filling.set(key, value)
                if (index + 1) % 1000 == 0:
                    print(f"stored {index + 1}/{len(stored)}", file=sys.stderr, flush=True)
            fill_s = time.perf_counter() - started
            async with DRAMTier(
                args.dsn, namespace="bench", schema=schema, embedder=embedder, text_of=entry_text
            ) as live:
                # Warm-up: the query vectors for the "vector given" runs, caches, plans.
                await precomputed.embed(queries)
                for query in queries[:50]:
                    await live.search(query, limit=10, mode=mode)
                full: list[float] = []
                given: list[float] = []
                embed_only: list[float] = []
                for query in queries:
                    started = time.perf_counter()
                    await live.search(query, limit=10, mode=mode)
                    full.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    await filling.search(query, limit=10, mode=mode)
                    given.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    await embedder.embed([query])
                    embed_only.append((time.perf_counter() - started) * 1000)
    finally:
        await drop_schema(args.dsn, schema)
    return {
        "entries": len(stored),
        "queries": len(queries),
        "embedder": repr(embedder),
        "mode": mode,
        "corpus": "LoCoMo" if args.data else "synthetic",
        "embed_entries_s": round(embed_s, 1),
        "fill_s": round(fill_s, 1),
        "search_ms": _summary(full),
        "search_vector_given_ms": _summary(given),
        "embed_one_query_ms": _summary(embed_only),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a LoCoMo release (else synthetic text)")
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--embedder", choices=EMBEDDERS, default="minilm")
    parser.add_argument("--embedding-model")
    parser.add_argument("--embedding-dimensions", type=int)
    parser.add_argument("--mode", choices=SEARCH_MODES, default="hybrid")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--dsn")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(
        f"{result['entries']} entries ({result['corpus']}), {result['queries']} top-10 "
        f"{result['mode']} searches, {result['embedder']}\n\n"
        "| operation | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|"
    )
    for name, label in (
        ("search_ms", "search (query embedding included)"),
        ("search_vector_given_ms", "search (vector given: SQL, fusion, decoding)"),
        ("embed_one_query_ms", "embed one query"),
    ):
        row = result[name]
        assert isinstance(row, dict)
        print(f"| {label} | {row['p50']:.2f} | {row['p95']:.2f} | {row['p99']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
