"""The LoCoMo evaluation on a tiny synthetic conversation in LoCoMo's format (real Postgres)."""

from __future__ import annotations

import dataclasses
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sagemem.cli import main as cli_main
from sagemem.embedding import HashingEmbedder
from sagemem.errors import ConfigurationError
from sagemem.evaluation.locomo import (
    ChatJudge,
    EvaluationOptions,
    evaluate,
    format_report,
    load_conversations,
)

FILLER = [
    "I repainted the garage door blue",
    "my cousin plays the cello in an orchestra",
    "we adopted a parrot named Kiwi",
    "the bakery on Elm street closed",
    "I started learning Portuguese online",
    "our team won the chess tournament",
    "I planted tomatoes and basil",
    "my laptop battery died during the meeting",
    "we watched a documentary about volcanoes",
    "I bought new running shoes",
    "the museum had a dinosaur exhibit",
    "I fixed the leaking kitchen sink",
]


def _sample() -> dict[str, Any]:
    """One conversation in the one-file-per-conversation LoCoMo format."""
    session_1 = [
        {"speaker": "Ann", "dia_id": "D1:1", "text": "Did you go to the pottery workshop?"},
        {"speaker": "Ben", "dia_id": "D1:2", "text": "Yes, last Tuesday!"},
        {"speaker": "Ann", "dia_id": "D1:3", "text": "I adopted a greyhound called Rocket"},
        {
            "speaker": "Ben",
            "dia_id": "D1:4",
            "text": "Look at this",
            "blip_caption": "a photo of a red kayak on a lake",
        },
    ]
    session_2 = [
        {"speaker": speaker, "dia_id": f"D2:{index + 1}", "text": text}
        for index, (speaker, text) in enumerate(
            zip(["Ann", "Ben"] * len(FILLER), FILLER, strict=False)
        )
    ]
    return {
        "speaker_a": "Ann",
        "speaker_b": "Ben",
        "session_1_date_time": "1:00 pm on 8 May, 2023",
        "session_1": session_1,
        "session_2_date_time": "3:00 pm on 9 June, 2023",
        "session_2": session_2,
        "session_3_date_time": "4:00 pm on 1 July, 2023",  # announced, never held
        "qa": [
            {
                "question": "What is the name of Ann's greyhound?",
                "answer": "Rocket",
                "evidence": ["D1:3"],
                "category": 4,
            },
            {
                "question": "When did Ben go to the pottery workshop?",
                "answer": "last Tuesday",
                "evidence": ["D1:2"],
                "category": 2,
            },
            {
                "question": "What color is the kayak of Ben?",
                "answer": "a kayak",
                "evidence": ["D1:4"],
                "category": 1,
            },
            {
                "question": "Which instrument does the cousin play?",
                "answer": "cello",
                "evidence": ["D2:2"],
                "category": 3,
            },
            {
                "question": "What did Ann say about Mars?",
                "adversarial_answer": "nothing",
                "evidence": ["D1:1"],
                "category": 5,
            },
            {
                "question": "A question without evidence",
                "answer": "-",
                "evidence": [],
                "category": 4,
            },
        ],
        "session_1_observation": {
            "Ann": [["Ann has a greyhound named Rocket.", "D1:3"]],
            "Ben": [["Ben went to a pottery workshop on a Tuesday.", "D1:2"]],
        },
        "session_1_summary": "Ann and Ben talked about pottery and a new dog.",
    }


@pytest.fixture
def data_zip(tmp_path: Path) -> Path:
    """A zip laid out like the published release, holding the synthetic conversation."""
    path = tmp_path / "locomo-synthetic.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data/multimodal_dialog/locomo10_v2/1.json", json.dumps(_sample()))
    return path


def test_both_release_formats_load_to_the_same_conversation(data_zip: Path, tmp_path: Path) -> None:
    """The zip of per-conversation files and the single locomo10.json format read the same."""
    (from_zip,) = load_conversations(data_zip)
    sample = _sample()
    conversation = {
        key: value for key, value in sample.items() if key.startswith(("session", "speaker"))
    }
    single = tmp_path / "locomo10.json"
    single.write_text(
        json.dumps(
            [
                {
                    "sample_id": "1",
                    "conversation": conversation,
                    "qa": sample["qa"],
                    "observation": {"session_1_observation": sample["session_1_observation"]},
                    "session_summary": {"session_1_summary": sample["session_1_summary"]},
                }
            ]
        )
    )
    (from_json,) = load_conversations(single)
    assert from_zip.turns == from_json.turns
    assert from_zip.questions == from_json.questions
    assert from_zip.observations == from_json.observations
    assert from_zip.summaries == from_json.summaries
    assert [turn.dia_id for turn in from_zip.turns[:4]] == ["D1:1", "D1:2", "D1:3", "D1:4"]
    assert from_zip.turns[3].caption == "a photo of a red kayak on a lake"
    assert len(from_zip.observations) == 2


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("not json", "not JSON"), ('{"session_1": []}', "no `qa` list"), ("[]", "no conversation")],
)
def test_bad_data_raises_configuration_error(tmp_path: Path, content: str, fragment: str) -> None:
    """Files that are not LoCoMo data are refused with the file named and the fix."""
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=fragment):
        load_conversations(path)
    with pytest.raises(ConfigurationError, match="no such file"):
        load_conversations(tmp_path / "missing.zip")


async def test_evaluation_finds_evidence_and_skips_adversarial_and_unanswerable(
    data_zip: Path, postgres_dsn: str
) -> None:
    """Recall per category: each answerable question of categories 1-4 finds its turn."""
    conversations = load_conversations(data_zip)
    report = await evaluate(conversations, HashingEmbedder(), dsn=postgres_dsn)
    assert sorted(report.ranks) == [1, 2, 3, 4]
    assert sum(len(ranks) for ranks in report.ranks.values()) == 4  # no cat. 5, no evidence-less
    assert report.ranks[4] == [0]  # the greyhound turn first
    assert report.ranks[3] == [0]  # the cello turn first
    (kayak_rank,) = report.ranks[1]  # found through the photo's caption
    assert kayak_rank is not None
    assert kayak_rank < 5
    assert report.entries == 4 + len(FILLER)
    assert len(report.ingest_ms) == report.entries
    assert len(report.query_ms) == 4
    summary = report.to_json()["retrieval"]["overall"]
    assert summary["questions"] == 4
    assert summary["recall@10"] == 1.0
    text = format_report(report)
    assert "| 4 single-hop | 1 | 1.000 |" in text
    assert "not requested" in text


async def test_the_previous_turn_as_context_finds_a_short_answer(
    data_zip: Path, postgres_dsn: str
) -> None:
    """'Yes, last Tuesday!' ranks higher for the pottery question with its question as context."""
    conversations = load_conversations(data_zip)
    with_context = await evaluate(conversations, HashingEmbedder(), dsn=postgres_dsn)
    alone = await evaluate(
        conversations,
        HashingEmbedder(),
        dsn=postgres_dsn,
        options=EvaluationOptions(context=False, captions=False),
    )
    (rank_with_context,) = with_context.ranks[2]
    (rank_alone,) = alone.ranks[2]
    assert rank_with_context is not None
    assert rank_with_context <= 1
    assert rank_alone is None or rank_alone > rank_with_context
    # without captions the kayak photo has no words about a kayak
    assert alone.ranks[1] != with_context.ranks[1]


async def test_observations_count_as_the_turns_they_name(data_zip: Path, postgres_dsn: str) -> None:
    """With observations ingested, a hit on one counts for the turn it names."""
    conversations = load_conversations(data_zip)
    report = await evaluate(
        conversations,
        HashingEmbedder(),
        dsn=postgres_dsn,
        options=EvaluationOptions(context=False, observations=True, summaries=True, mode="text"),
    )
    assert report.entries == 4 + len(FILLER) + 2 + 1
    assert report.ranks[4] == [0]


def test_the_cli_prints_the_report_and_writes_json(
    data_zip: Path,
    tmp_path: Path,
    postgres_dsn: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`sagemem eval locomo` runs end to end; --judge without an endpoint says it is skipped."""
    for name in ("OPENAI_API_KEY", "SAGEMEM_JUDGE_API_KEY", "SAGEMEM_JUDGE_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "report.json"
    status = cli_main(
        [
            "eval",
            "locomo",
            "--data",
            str(data_zip),
            "--embedder",
            "hashing",
            "--json",
            str(out),
            "--judge",
            "--dsn",
            postgres_dsn,
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "| **overall** | 4 |" in captured.out
    assert "LLM judge (J): skipped: no chat endpoint configured" in captured.out
    assert "[##############################] 100.0%" in captured.err
    report = json.loads(out.read_text())
    assert report["retrieval"]["overall"]["recall@10"] == 1.0
    assert set(report["query_ms"]) == {"p50", "p95"}


def test_the_cli_reports_bad_arguments_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing data file or an openai embedder without a model exits 2 with the reason."""
    assert cli_main(["eval", "locomo", "--data", str(tmp_path / "none.zip")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.fixture
def chat_stub() -> Iterator[tuple[str, list[str]]]:
    """An OpenAI-compatible chat server on 127.0.0.1: answers 'Rocket', judges it."""
    prompts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][0]["content"]
            prompts.append(prompt)
            if "Label the generated answer" in prompt:
                right = "Gold answer: Rocket" in prompt and "Generated answer: Rocket" in prompt
                reply = "CORRECT" if right else "WRONG"
            else:
                reply = "Rocket"
            payload = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", prompts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_the_llm_judge_answers_from_retrieved_turns_and_grades(
    data_zip: Path, postgres_dsn: str, chat_stub: tuple[str, list[str]]
) -> None:
    """--judge: one answer and one grading request per question; J per category."""
    url, prompts = chat_stub
    report = await evaluate(
        load_conversations(data_zip),
        HashingEmbedder(),
        dsn=postgres_dsn,
        judge=ChatJudge(url, "judge-model", None, timeout_s=10),
    )
    assert report.judge == {4: [True], 2: [False], 1: [False], 3: [False]}
    assert len(prompts) == 8
    assert "Ann: I adopted a greyhound called Rocket" in prompts[0]
    assert "LLM judge (J): overall 0.250" in format_report(report)


async def test_one_namespace_counts_only_evidence_of_the_question_s_own_conversation(
    data_zip: Path, postgres_dsn: str
) -> None:
    """With --one-namespace two identical conversations share a namespace: each question's
    evidence is its own conversation's turn, so the copy's question finds the first
    conversation's identical turn first (no evidence for it) and its own after it."""
    (conversation,) = load_conversations(data_zip)
    copy = dataclasses.replace(conversation, sample_id="copy")
    report = await evaluate(
        [conversation, copy],
        HashingEmbedder(),
        dsn=postgres_dsn,
        options=EvaluationOptions(one_namespace=True),
    )
    assert report.entries == 2 * (4 + len(FILLER))
    for category in (3, 4):
        original, copied = report.ranks[category]
        assert original == 0
        assert copied is not None  # found, but behind the identical turn of the first one
        assert 1 <= copied < 5
