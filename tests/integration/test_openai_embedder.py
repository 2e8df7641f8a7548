"""OpenAIEmbedder against a stub OpenAI-compatible server on 127.0.0.1 started by the test."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sagemem.embedders import OpenAIEmbedder
from sagemem.embedding import HashingEmbedder
from sagemem.errors import ConfigurationError, TierUnavailable
from sagemem.tiers.dram import DRAMTier

DIMENSIONS = 16


@dataclass
class StubServer:
    """What the stub received, and how it should answer the next requests."""

    url: str
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    status: int = 200
    body_override: bytes | None = None
    reverse: bool = True  # answer in reverse index order, as servers may


@pytest.fixture
def stub() -> Iterator[StubServer]:
    """A threaded HTTP server answering POST /v1/embeddings with hashing vectors."""
    state = StubServer(url="")
    hashing = HashingEmbedder(DIMENSIONS)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            state.requests.append((self.path, dict(self.headers.items()), body))
            if state.status != 200:
                payload = json.dumps({"error": {"message": "model not found"}}).encode()
            elif state.body_override is not None:
                payload = state.body_override
            else:
                items = [
                    {"object": "embedding", "index": index, "embedding": hashing.embed_one(text)}
                    for index, text in enumerate(body["input"])
                ]
                if state.reverse:
                    items.reverse()
                payload = json.dumps({"object": "list", "data": items}).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_embeddings_come_back_in_input_order_with_the_key_and_model_sent(
    stub: StubServer,
) -> None:
    """Vectors follow the inputs' order (by `index`); model, input and bearer key are sent."""
    embedder = OpenAIEmbedder(
        "text-embedding-test", dimensions=DIMENSIONS, base_url=stub.url, api_key="sk-test"
    )
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]
    vectors = await embedder.embed(texts)
    assert vectors == [HashingEmbedder(DIMENSIONS).embed_one(text) for text in texts]
    ((path, headers, body),) = stub.requests
    assert path == "/v1/embeddings"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "text-embedding-test"
    assert body["input"] == texts
    assert "dimensions" not in body


async def test_batches_are_split_and_dimensions_sent_on_request(stub: StubServer) -> None:
    """batch_size bounds each request; send_dimensions adds `dimensions` to the body."""
    embedder = OpenAIEmbedder(
        "m", dimensions=DIMENSIONS, base_url=stub.url, batch_size=2, send_dimensions=True
    )
    vectors = await embedder.embed(["a", "b", "c", "d", "e"])
    assert len(vectors) == 5
    assert [len(body["input"]) for _, _, body in stub.requests] == [2, 2, 1]
    assert {body["dimensions"] for _, _, body in stub.requests} == {DIMENSIONS}


async def test_an_http_error_raises_tier_unavailable_with_status_and_message(
    stub: StubServer,
) -> None:
    """A 404 from the server surfaces as TierUnavailable naming the status and the message."""
    stub.status = 404
    embedder = OpenAIEmbedder("missing-model", dimensions=DIMENSIONS, base_url=stub.url)
    with pytest.raises(TierUnavailable, match=r"HTTP 404.*model not found"):
        await embedder.embed(["x"])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not an OpenAI embeddings response"),
        (b'{"data": []}', "returned 0 vectors for 1 texts"),
        (b'{"data": [{"index": 0, "embedding": [1.0, 2.0]}]}', "2 components"),
    ],
)
async def test_malformed_answers_raise_configuration_error(
    stub: StubServer, body: bytes, fragment: str
) -> None:
    """Answers that are not embeddings of the right count and size are refused clearly."""
    stub.body_override = body
    embedder = OpenAIEmbedder("m", dimensions=DIMENSIONS, base_url=stub.url)
    with pytest.raises(ConfigurationError, match=fragment):
        await embedder.embed(["x"])


async def test_an_unreachable_server_raises_tier_unavailable() -> None:
    """A closed port raises TierUnavailable with the URL, not a raw OSError."""
    embedder = OpenAIEmbedder(
        "m", dimensions=DIMENSIONS, base_url="http://127.0.0.1:9/v1", timeout_s=5
    )
    with pytest.raises(TierUnavailable, match="could not be reached"):
        await embedder.embed(["x"])


async def test_the_semantic_tier_searches_with_the_http_embedder(
    stub: StubServer, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """A DRAMTier using the HTTP embedder stores and finds entries through the stub."""
    embedder = OpenAIEmbedder("m", dimensions=DIMENSIONS, base_url=stub.url)
    async with DRAMTier(
        postgres_dsn, namespace=namespace, schema=pg_schema, embedder=embedder
    ) as tier:
        await tier.set("cats", "cats purr and chase mice")
        await tier.set("ocean", "the pacific ocean is deep")
        hits = await tier.search("do cats purr", limit=1)
    assert [hit.key for hit in hits] == ["cats"]
    assert [body["input"] for _, _, body in stub.requests] == [
        ["cats purr and chase mice"],
        ["the pacific ocean is deep"],
        ["do cats purr"],
    ]
