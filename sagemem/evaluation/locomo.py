"""The LoCoMo evaluation of the semantic tier: `sagemem eval locomo --data PATH`.

LoCoMo (Maharana et al., ACL 2024) has long conversations between two speakers, split into
dated sessions of turns (each with a `dia_id` such as `D1:3`), and questions whose `evidence`
names the turns that answer them, in categories 1 multi-hop, 2 temporal, 3 open-domain,
4 single-hop and 5 adversarial (usually left out). For each conversation this ingests every
turn as one entry of a `DRAMTier` in a fresh namespace (optionally the observations too, which
name their turns, and the session summaries, which count as no turn), asks every question
with `search()` and reports, per category and overall, evidence recall@1/@5/@10 (the share of
questions with an evidence turn among the first k hits) and MRR@10, plus the latency of each
ingest write and each search (p50/p95). `--judge` also answers each question from the
retrieved turns with an OpenAI-compatible chat model and grades the answer with the same
model as an LLM judge (J, as in the Mem0 paper); without a configured endpoint it says it is
skipped.

`--data` is a LoCoMo release: a `.zip` (as published), a folder of its JSON files, or one
`.json` file; both the single-file format (`locomo10.json`, a list of samples with a
`conversation` object) and the one-file-per-conversation format are read. The data is read,
never copied. Everything is written to a schema of its own (`locomo_<random>`) that is dropped
at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import statistics
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import asyncpg

from sagemem import embedders
from sagemem.embedding import Embedder, HashingEmbedder
from sagemem.errors import ConfigurationError, SageMemError
from sagemem.services import resolve_postgres_dsn
from sagemem.tiers.dram import SEARCH_MODES, DRAMTier, SearchMode
from sagemem.values import JSONValue

__all__ = [
    "CATEGORY_NAMES",
    "EMBEDDERS",
    "ChatJudge",
    "Conversation",
    "EvaluationOptions",
    "EvaluationReport",
    "Question",
    "Turn",
    "build_embedder",
    "conversation_entries",
    "drop_schema",
    "entry_text",
    "evaluate",
    "format_report",
    "load_conversations",
    "main",
]

CATEGORY_NAMES: Final = {
    1: "multi-hop",
    2: "temporal",
    3: "open-domain",
    4: "single-hop",
    5: "adversarial",
}
RECALL_AT: Final = (1, 5, 10)
SEARCH_LIMIT: Final = max(RECALL_AT)
EMBEDDERS: Final = ("minilm", "wordllama", "hashing", "openai")
JUDGE_BASE_URL_ENV: Final = "SAGEMEM_JUDGE_BASE_URL"
JUDGE_API_KEY_ENV: Final = "SAGEMEM_JUDGE_API_KEY"
_SESSION: Final = re.compile(r"session_(\d+)")


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of a conversation."""

    dia_id: str
    speaker: str
    text: str
    session: int
    date: str
    caption: str | None = None


@dataclass(frozen=True, slots=True)
class Question:
    """One question with the dia_ids of the turns that answer it."""

    text: str
    category: int
    evidence: frozenset[str]
    answer: str


@dataclass(frozen=True, slots=True)
class Conversation:
    """A LoCoMo sample: its turns in order, questions, observations and session summaries."""

    sample_id: str
    turns: tuple[Turn, ...]
    questions: tuple[Question, ...]
    observations: tuple[tuple[str, frozenset[str]], ...] = ()
    summaries: tuple[tuple[int, str], ...] = ()


def _bad_data(source: str, problem: str) -> ConfigurationError:
    return ConfigurationError(
        f"LoCoMo data {source}: {problem}; pass --data a LoCoMo release (the .zip, a folder "
        "of its .json files or one .json file)"
    )


def _parse_sample(sample: object, source: str) -> Conversation:
    if not isinstance(sample, dict):
        raise _bad_data(source, f"a sample is {type(sample).__name__}, not a JSON object")
    body = sample.get("conversation", sample)
    if not isinstance(body, dict) or "qa" not in sample:
        raise _bad_data(source, "a sample has no `qa` list")
    sessions = sorted(
        int(match.group(1))
        for name in body
        if (match := _SESSION.fullmatch(name)) and isinstance(body[name], list)
    )
    turns: list[Turn] = []
    for number in sessions:
        date = str(body.get(f"session_{number}_date_time", ""))
        for raw in body[f"session_{number}"]:
            if not isinstance(raw, dict) or "dia_id" not in raw or "text" not in raw:
                raise _bad_data(source, f"session_{number} has a turn without dia_id/text")
            caption = raw.get("blip_caption")
            turns.append(
                Turn(
                    dia_id=str(raw["dia_id"]).strip(),
                    speaker=str(raw.get("speaker", "")),
                    text=str(raw["text"]),
                    session=number,
                    date=date,
                    caption=str(caption) if caption else None,
                )
            )
    questions = tuple(
        Question(
            text=str(raw["question"]),
            category=int(raw["category"]),
            evidence=frozenset(str(item).strip() for item in raw.get("evidence") or ()),
            answer=str(raw.get("answer", raw.get("adversarial_answer", ""))),
        )
        for raw in sample["qa"]
    )
    observations: list[tuple[str, frozenset[str]]] = []
    raw_observations = sample.get("observation", {})
    per_session = (
        [value for key, value in sorted(raw_observations.items())]
        if isinstance(raw_observations, dict)
        else []
    )
    per_session += [sample[key] for key in sample if str(key).endswith("_observation")]
    for block in per_session:
        if isinstance(block, dict):
            for facts in block.values():
                for fact in facts if isinstance(facts, list) else ():
                    if isinstance(fact, list) and len(fact) == 2:
                        ids = fact[1] if isinstance(fact[1], list) else [fact[1]]
                        observations.append((str(fact[0]), frozenset(str(i).strip() for i in ids)))
    summaries_source = sample.get("session_summary", sample)
    summaries: list[tuple[int, str]] = []
    if isinstance(summaries_source, dict):
        for key, value in summaries_source.items():
            match = re.fullmatch(r"session_(\d+)_summary", str(key))
            if match and isinstance(value, str):
                summaries.append((int(match.group(1)), value))
    return Conversation(
        sample_id=str(sample.get("sample_id", Path(source).stem)),
        turns=tuple(turns),
        questions=questions,
        observations=tuple(observations),
        summaries=tuple(sorted(summaries)),
    )


def _parse_document(text: str, source: str) -> list[Conversation]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise _bad_data(source, f"not JSON ({error})") from error
    samples = document if isinstance(document, list) else [document]
    return [_parse_sample(sample, source) for sample in samples]


def load_conversations(path: Path) -> list[Conversation]:
    """The conversations of a LoCoMo release at `path` (.zip, folder or .json), in name order."""
    if not path.exists():
        raise _bad_data(str(path), "no such file or folder")
    conversations: list[Conversation] = []
    if path.is_dir():
        for file in sorted(path.rglob("*.json")):
            conversations += _parse_document(file.read_text(encoding="utf-8"), str(file))
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in sorted(archive.namelist()):
                if name.endswith(".json") and "/." not in name and not name.startswith("__"):
                    text = archive.read(name).decode("utf-8")
                    conversations += _parse_document(text, f"{path}:{name}")
    else:
        conversations = _parse_document(path.read_text(encoding="utf-8"), str(path))
    if not conversations:
        raise _bad_data(str(path), "no conversation found")
    return conversations


def entry_text(value: JSONValue) -> str:
    """The text embedded and indexed for an entry of the evaluation (the tier's `text_of`).

    A turn reads `Speaker: text [shares a photo: caption]`, preceded by the previous turn of
    the same session when the entry carries it (`context`), so that a short answer ("Yes, last
    week!") is found by the question it answers.
    """
    if not isinstance(value, dict):
        return str(value)
    text = f"{value.get('speaker', '')}: {value.get('text', '')}"
    caption = value.get("caption")
    if caption:
        text += f" [shares a photo: {caption}]"
    context = value.get("context")
    if context:
        text = f"{context}\n{text}"
    return text


@dataclass(frozen=True, slots=True)
class EvaluationOptions:
    """What to ingest and how to search."""

    mode: SearchMode = "hybrid"
    context: bool = True
    captions: bool = True
    observations: bool = False
    summaries: bool = False
    categories: frozenset[int] = frozenset({1, 2, 3, 4})
    candidates: int | None = None
    text_weight: float = 1.0
    one_namespace: bool = False  # all conversations in one namespace (evidence ids prefixed)


@dataclass(slots=True)
class EvaluationReport:
    """Ranks of the first evidence hit per question (None: not in the top 10), latencies."""

    ranks: dict[int, list[int | None]] = field(default_factory=dict)
    ingest_ms: list[float] = field(default_factory=list)
    query_ms: list[float] = field(default_factory=list)
    conversations: int = 0
    entries: int = 0
    judge: dict[int, list[bool]] | None = None
    judge_note: str = ""

    def recall(self, ranks: Sequence[int | None], k: int) -> float:
        """The share of `ranks` below `k` (0-based)."""
        return sum(1 for rank in ranks if rank is not None and rank < k) / max(1, len(ranks))

    def mrr(self, ranks: Sequence[int | None]) -> float:
        """Mean reciprocal rank, 0 for a miss."""
        return sum(1 / (rank + 1) for rank in ranks if rank is not None) / max(1, len(ranks))

    def to_json(self) -> dict[str, Any]:
        """The summary as plain JSON-able data."""
        rows: dict[str, Any] = {}
        groups = {str(category): ranks for category, ranks in sorted(self.ranks.items())}
        groups["overall"] = [rank for ranks in self.ranks.values() for rank in ranks]
        for name, ranks in groups.items():
            rows[name] = {
                "questions": len(ranks),
                **{f"recall@{k}": round(self.recall(ranks, k), 4) for k in RECALL_AT},
                "mrr": round(self.mrr(ranks), 4),
            }
        return {
            "conversations": self.conversations,
            "entries": self.entries,
            "retrieval": rows,
            "ingest_ms": _percentiles(self.ingest_ms),
            "query_ms": _percentiles(self.query_ms),
            "judge": None
            if self.judge is None
            else {
                str(category): round(sum(marks) / max(1, len(marks)), 4)
                for category, marks in sorted(self.judge.items())
            },
            "judge_note": self.judge_note,
        }


def _percentiles(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {"p50": 0.0, "p95": 0.0}
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return {"p50": round(statistics.median(ordered), 3), "p95": round(p95, 3)}


class Progress:
    """A one-line progress bar on a text stream (redrawn in place on a terminal)."""

    def __init__(self, stream: TextIO | None, total: int) -> None:
        self._stream = stream
        self._total = max(1, total)
        self._done = 0
        self._shown = -1.0
        self._start = time.monotonic()
        self._tty = bool(stream is not None and stream.isatty())

    def advance(self, label: str, steps: int = 1) -> None:
        """Count `steps` more done and redraw when the bar moved (or on a terminal)."""
        self._done += steps
        fraction = self._done / self._total
        stream = self._stream
        if stream is None:
            return
        finished = fraction >= 1.0 and self._shown < 1.0
        if not (self._tty or finished or fraction - self._shown >= 0.05):
            return
        self._shown = fraction
        width = 30
        bar = "#" * int(width * fraction) + "-" * (width - int(width * fraction))
        elapsed = time.monotonic() - self._start
        line = f"[{bar}] {100 * fraction:5.1f}% {self._done}/{self._total} {elapsed:6.1f}s {label}"
        if self._tty:
            stream.write("\r" + line[:120].ljust(120))
            if fraction >= 1.0:
                stream.write("\n")
        else:
            stream.write(line + "\n")
        stream.flush()


def conversation_entries(
    conversation: Conversation, options: EvaluationOptions
) -> list[tuple[str, dict[str, JSONValue]]]:
    """The (key, value) entries stored for a conversation: its turns, then the options' extras."""
    entries: list[tuple[str, dict[str, JSONValue]]] = []
    previous: Turn | None = None
    for turn in conversation.turns:
        value: dict[str, JSONValue] = {
            "kind": "turn",
            "dia_id": turn.dia_id,
            "evidence": [turn.dia_id],
            "speaker": turn.speaker,
            "text": turn.text,
            "session": turn.session,
            "date": turn.date,
        }
        if options.captions and turn.caption:
            value["caption"] = turn.caption
        if options.context and previous is not None and previous.session == turn.session:
            value["context"] = f"{previous.speaker}: {previous.text}"
        entries.append((f"turn:{turn.dia_id}", value))
        previous = turn
    if options.observations:
        for index, (text, ids) in enumerate(conversation.observations):
            entries.append(
                (
                    f"observation:{index}",
                    {"kind": "observation", "text": text, "evidence": list(sorted(ids))},
                )
            )
    if options.summaries:
        for session, text in conversation.summaries:
            entries.append(
                (f"summary:{session}", {"kind": "summary", "text": text, "evidence": []})
            )
    return entries


def _prefixed_evidence(value: dict[str, JSONValue], index: int) -> dict[str, JSONValue]:
    evidence = value.get("evidence")
    items = evidence if isinstance(evidence, list) else []
    return {**value, "evidence": [f"{index}:{item}" for item in items]}


def _first_evidence_rank(hits: Sequence[JSONValue], evidence: frozenset[str]) -> int | None:
    for rank, value in enumerate(hits):
        ids = value.get("evidence") if isinstance(value, dict) else None
        if isinstance(ids, list) and any(item in evidence for item in ids):
            return rank
    return None


Judge = Callable[[Question, list[str]], bool]


async def evaluate(
    conversations: Sequence[Conversation],
    embedder: Embedder,
    *,
    dsn: str | None = None,
    options: EvaluationOptions | None = None,
    judge: Judge | None = None,
    progress: TextIO | None = None,
    schema: str | None = None,
) -> EvaluationReport:
    """Ingest each conversation into a fresh namespace, ask its questions, collect ranks.

    The entries go to `schema` (default a fresh `locomo_<random>`, dropped at the end).
    """
    options = options or EvaluationOptions()
    report = EvaluationReport(conversations=len(conversations))
    if judge is not None:
        report.judge = {}
    own_schema = schema is None
    schema = schema or f"locomo_{uuid.uuid4().hex[:12]}"
    run = uuid.uuid4().hex[:8]
    plans = [
        (conversation.sample_id, conversation_entries(conversation, options))
        for conversation in conversations
    ]
    asked = [
        [q for q in conversation.questions if q.category in options.categories and q.evidence]
        for conversation in conversations
    ]
    if options.one_namespace and plans:
        # One namespace for all: keys and evidence ids name their conversation, so a turn of
        # another conversation (which may share a dia_id) is no evidence.
        plans = [
            (
                f"all {len(plans)}",
                [
                    (f"{index}:{key}", _prefixed_evidence(value, index))
                    for index, (_, entries) in enumerate(plans)
                    for key, value in entries
                ],
            )
        ]
        asked = [
            [
                dataclasses.replace(
                    question, evidence=frozenset(f"{index}:{item}" for item in question.evidence)
                )
                for index, questions in enumerate(asked)
                for question in questions
            ]
        ]
    total = sum(len(entries) for _, entries in plans) + sum(len(qs) for qs in asked)
    bar = Progress(progress, total)
    tier: DRAMTier | None = None
    try:
        for index, ((sample_id, entries), questions) in enumerate(zip(plans, asked, strict=True)):
            namespace = f"locomo-{run}-{index}"
            tier = DRAMTier(
                dsn, namespace=namespace, schema=schema, embedder=embedder, text_of=entry_text
            )
            async with tier:
                label = f"conversation {index + 1}/{len(plans)} ({sample_id})"
                for key, value in entries:
                    started = time.perf_counter()
                    await tier.set(key, value)
                    report.ingest_ms.append((time.perf_counter() - started) * 1000)
                    bar.advance(f"{label}: ingest")
                report.entries += len(entries)
                for question in questions:
                    started = time.perf_counter()
                    hits = await tier.search(
                        question.text,
                        limit=SEARCH_LIMIT,
                        mode=options.mode,
                        candidates=options.candidates,
                        text_weight=options.text_weight,
                    )
                    report.query_ms.append((time.perf_counter() - started) * 1000)
                    values = [
                        hit.value
                        for hit in hits
                        if not (isinstance(hit.value, dict) and hit.value.get("kind") == "summary")
                    ]
                    rank = _first_evidence_rank(values, question.evidence)
                    report.ranks.setdefault(question.category, []).append(rank)
                    if judge is not None and report.judge is not None:
                        context = [entry_text(value) for value in values]
                        mark = await asyncio.to_thread(judge, question, context)
                        report.judge.setdefault(question.category, []).append(mark)
                    bar.advance(f"{label}: questions")
    finally:
        if own_schema:
            await drop_schema(dsn, schema)
    return report


async def drop_schema(dsn: str | None, schema: str) -> None:
    """Drop `schema` and everything in it (the evaluation's own schema)."""
    resolved = dsn or await asyncio.to_thread(resolve_postgres_dsn, None)
    connection = await asyncpg.connect(resolved, timeout=30)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close(timeout=30)


def format_report(report: EvaluationReport) -> str:
    """The report as Markdown tables: retrieval per category and overall, then latencies."""
    data = report.to_json()
    lines = [
        f"{data['conversations']} conversations, {data['entries']} entries",
        "",
        "| category | questions | recall@1 | recall@5 | recall@10 | MRR@10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in data["retrieval"].items():
        label = f"{name} {CATEGORY_NAMES[int(name)]}" if name.isdigit() else "**overall**"
        lines.append(
            f"| {label} | {row['questions']} | {row['recall@1']:.3f} | {row['recall@5']:.3f} | "
            f"{row['recall@10']:.3f} | {row['mrr']:.3f} |"
        )
    lines += [
        "",
        "| latency | p50 ms | p95 ms |",
        "|---|---:|---:|",
        f"| ingest (one write, embedding included) | {data['ingest_ms']['p50']:.2f} | "
        f"{data['ingest_ms']['p95']:.2f} |",
        f"| query (one search, top {SEARCH_LIMIT}, embedding included) | "
        f"{data['query_ms']['p50']:.2f} | {data['query_ms']['p95']:.2f} |",
        "",
    ]
    if data["judge"] is None:
        lines.append(f"LLM judge (J): {data['judge_note'] or 'not requested (--judge)'}")
    else:
        marks = [mark for values in (report.judge or {}).values() for mark in values]
        overall = sum(marks) / max(1, len(marks))
        per_category = ", ".join(f"{k}: {v:.3f}" for k, v in data["judge"].items())
        lines.append(f"LLM judge (J): overall {overall:.3f} ({per_category})")
    return "\n".join(lines)


# -- the LLM judge ------------------------------------------------------------------------------


class ChatJudge:
    """Answers a question from retrieved turns with a chat model, then grades it (J).

    Talks to an OpenAI-compatible `POST {base_url}/chat/completions`. The grading prompt follows
    the Mem0 paper's judge: the generated answer is CORRECT when it is about the same topic and
    facts as the gold answer (dates in any format), WRONG otherwise.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s

    def _chat(self, prompt: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
        }
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=json.dumps(body).encode("utf-8"),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                document = json.loads(response.read())
            return str(document["choices"][0]["message"]["content"])
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as error:
            raise ConfigurationError(
                f"chat endpoint {self.base_url}/chat/completions failed ({error}); check "
                f"{JUDGE_BASE_URL_ENV}, {JUDGE_API_KEY_ENV} and --judge-model"
            ) from error

    def __call__(self, question: Question, context: list[str]) -> bool:
        memories = "\n".join(f"- {line}" for line in context)
        answer = self._chat(
            "Answer the question from these memories of a conversation, in a few words.\n"
            f"Memories:\n{memories}\n\nQuestion: {question.text}\nAnswer:"
        )
        verdict = self._chat(
            "Label the generated answer CORRECT or WRONG against the gold answer. Be generous: "
            "it is CORRECT if it refers to the same facts or time as the gold answer.\n"
            f"Question: {question.text}\nGold answer: {question.answer}\n"
            f"Generated answer: {answer}\nReply with one word, CORRECT or WRONG."
        )
        return "CORRECT" in verdict.upper() and "WRONG" not in verdict.upper()


# -- command line -------------------------------------------------------------------------------


def build_embedder(args: argparse.Namespace) -> Embedder:
    """The embedder named by --embedder."""
    if args.embedder == "hashing":
        return HashingEmbedder()
    if args.embedder == "minilm":
        return embedders.MiniLMEmbedder()
    if args.embedder == "wordllama":
        return embedders.WordLlamaEmbedder()
    if not args.embedding_model or not args.embedding_dimensions:
        raise ConfigurationError(
            "--embedder openai needs --embedding-model and --embedding-dimensions (and "
            f"{embedders.OPENAI_BASE_URL_ENV} / {embedders.OPENAI_API_KEY_ENV} as needed)"
        )
    return embedders.OpenAIEmbedder(args.embedding_model, dimensions=args.embedding_dimensions)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evidence retrieval of the semantic tier on LoCoMo: recall@1/5/10 and MRR "
        "per category, ingest and query latency.",
        epilog="exit status: 0 the evaluation ran; 1 a server or the data failed (the reason is "
        "printed); 2 a usage error or a bad setting.",
    )
    parser.add_argument("--data", type=Path, required=True, help="LoCoMo .zip, folder or .json")
    parser.add_argument("--embedder", choices=EMBEDDERS, default="minilm")
    parser.add_argument("--embedding-model", help="model name for --embedder openai")
    parser.add_argument("--embedding-dimensions", type=int, help="its vector size")
    parser.add_argument("--mode", choices=SEARCH_MODES, default="hybrid")
    parser.add_argument("--candidates", type=int, help="per-ranking candidates before fusion")
    parser.add_argument(
        "--text-weight", type=float, default=1.0, help="weight of the text ranking in RRF"
    )
    parser.add_argument(
        "--no-context", action="store_true", help="index each turn alone (no previous turn)"
    )
    parser.add_argument("--no-captions", action="store_true", help="leave out photo captions")
    parser.add_argument(
        "--observations", action="store_true", help="also ingest observations (name turns)"
    )
    parser.add_argument(
        "--summaries", action="store_true", help="also ingest session summaries (no turn)"
    )
    parser.add_argument(
        "--categories", default="1,2,3,4", help="comma-separated categories (default 1,2,3,4)"
    )
    parser.add_argument("--conversations", type=int, help="only the first N conversations")
    parser.add_argument(
        "--one-namespace",
        action="store_true",
        help="store every conversation in one namespace (harder: other conversations' turns "
        "compete; exercises search over thousands of entries)",
    )
    parser.add_argument(
        "--postgres-dsn",
        "--dsn",
        dest="postgres_dsn",
        help="Postgres DSN (default: SAGEMEM_POSTGRES_DSN or embedded)",
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument(
        "--judge",
        action="store_true",
        help=f"answer and grade with an LLM ({JUDGE_BASE_URL_ENV}, {JUDGE_API_KEY_ENV} or "
        "OPENAI_API_KEY)",
    )
    parser.add_argument("--judge-model", default="gpt-4o-mini")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _judge_from_environment(model: str) -> tuple[Judge | None, str]:
    base_url = os.environ.get(JUDGE_BASE_URL_ENV)
    api_key = os.environ.get(JUDGE_API_KEY_ENV) or os.environ.get("OPENAI_API_KEY")
    if not base_url and not api_key:
        return None, (
            f"skipped: no chat endpoint configured (set {JUDGE_BASE_URL_ENV} for a local "
            f"server, or {JUDGE_API_KEY_ENV} / OPENAI_API_KEY for OpenAI)"
        )
    judge = ChatJudge(base_url or "https://api.openai.com/v1", model, api_key, timeout_s=60.0)
    return judge, f"model {model} at {judge.base_url}"


def main(argv: Sequence[str] | None = None, *, prog: str = "sagemem eval locomo") -> int:
    """Run the evaluation from the command line; returns the exit status."""
    args = _parser(prog).parse_args(argv)
    try:
        categories = frozenset(int(part) for part in args.categories.split(",") if part.strip())
    except ValueError:
        print(f"{prog}: --categories must list integers, got {args.categories!r}", file=sys.stderr)
        return 2
    try:
        conversations = load_conversations(args.data)
        if args.conversations is not None:
            conversations = conversations[: args.conversations]
        embedder = build_embedder(args)
        judge: Judge | None = None
        note = ""
        if args.judge:
            judge, note = _judge_from_environment(args.judge_model)
            print(f"LLM judge: {note}", file=sys.stderr)
        options = EvaluationOptions(
            mode=args.mode,
            context=not args.no_context,
            captions=not args.no_captions,
            observations=args.observations,
            summaries=args.summaries,
            categories=categories,
            candidates=args.candidates,
            text_weight=args.text_weight,
            one_namespace=args.one_namespace,
        )
        print(
            f"LoCoMo: {len(conversations)} conversations, embedder {embedder!r}, {options}",
            file=sys.stderr,
        )
        report = asyncio.run(
            evaluate(
                conversations,
                embedder,
                dsn=args.postgres_dsn,
                options=options,
                judge=judge,
                progress=None if args.quiet else sys.stderr,
            )
        )
    except ConfigurationError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    except SageMemError as error:
        print(f"{prog}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    report.judge_note = note if args.judge else ""
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0
