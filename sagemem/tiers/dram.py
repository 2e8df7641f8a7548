"""DRAM: the semantic tier, Postgres + pgvector: exact lookup by key and search by meaning.

Rows live in `<schema>.dram_entries`, versioned exactly like L3 (same statements, same
tombstones, so versions only grow and compare-and-swap has the same semantics; see
`sagemem.tiers.l3`), plus an `embedding vector(dimensions)` column computed on every write
from the value's text (`text_of`) by the tier's `Embedder`. `search()` orders the live rows
of the namespace by cosine distance to the query through an HNSW index
(`vector_cosine_ops`), with pgvector's iterative index scan so the namespace filter cannot
starve the result. The `vector` extension is created if missing and its asyncpg codec is
registered on every pooled connection.

This module must never let an asyncpg exception escape: driver errors become
`TierUnavailable` with the driver's exception as the cause.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

import asyncpg
from pgvector.asyncpg import register_vector

from sagemem._driver_errors import refused_by_server, tier_unavailable
from sagemem.embedding import DIMENSIONS_MAX, Embedder, HashingEmbedder
from sagemem.errors import ConfigurationError, InvalidValueError, TierUnavailable
from sagemem.tiers.l3 import POSTGRES_DRIVER_ERRORS, POSTGRES_HINT, VersionedRowTier
from sagemem.values import VALUE_SIZE_MAX_BYTES, JSONValue, decode_value

__all__ = ["DRAMTier", "SearchHit"]

_SEARCH_LIMIT_MAX: Final = 1000
_EF_SEARCH_MAX: Final = 1000


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result of `DRAMTier.search`: a live key, its value and version, and how close it is.

    `distance` is the cosine distance between the query and the key's embedding (0 identical
    direction, 1 unrelated, 2 opposite).
    """

    key: str
    value: JSONValue
    version: int
    distance: float

    @property
    def similarity(self) -> float:
        """Cosine similarity, `1 - distance` (1 for the same direction)."""
        return 1.0 - self.distance


def _default_text_of(value: JSONValue, canonical_text: str) -> str:
    """The text embedded for `value`: a str value itself, anything else its JSON text."""
    return value if isinstance(value, str) else canonical_text


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class DRAMTier(VersionedRowTier):
    """The semantic tier: versioned JSON values with embeddings, searchable by meaning.

    `dsn=None` takes `SAGEMEM_POSTGRES_DSN`, else the embedded server, when `connect()` runs.
    The tier owns its connection pool (created by `connect()`, closed by `aclose()`) and creates
    the `vector` extension, schema, table and HNSW index if they are missing. `embedder`
    defaults to `HashingEmbedder(dimensions)` (deterministic, no model); `dimensions` defaults
    to the embedder's. One schema holds one embedding size: connecting with another size than
    the existing table's raises `ConfigurationError`. `text_of(value)` chooses the text to
    embed (default: a str value itself, anything else its canonical JSON text). The embedder
    gets at most `command_timeout_s` per call.
    """

    name: str = "DRAM"
    _table: ClassVar[str] = "dram_entries"
    _extra_columns: ClassVar[tuple[str, ...]] = ("embedding",)

    def __init__(
        self,
        dsn: str | None = None,
        *,
        namespace: str = "default",
        schema: str = "sagemem",
        embedder: Embedder | None = None,
        dimensions: int | None = None,
        text_of: Callable[[JSONValue], str] | None = None,
        value_size_max_bytes: int = VALUE_SIZE_MAX_BYTES,
        pool_size_max: int = 10,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(
            dsn,
            namespace=namespace,
            schema=schema,
            value_size_max_bytes=value_size_max_bytes,
            pool_size_max=pool_size_max,
            connect_timeout_s=connect_timeout_s,
            command_timeout_s=command_timeout_s,
        )
        if dimensions is not None and (
            type(dimensions) is not int or not 1 <= dimensions <= DIMENSIONS_MAX
        ):
            raise ConfigurationError(
                f"DRAM dimensions must be an int from 1 to {DIMENSIONS_MAX} (the HNSW limit), "
                f"got {dimensions!r}"
            )
        if embedder is None:
            embedder = HashingEmbedder() if dimensions is None else HashingEmbedder(dimensions)
        elif not isinstance(embedder, Embedder) or not inspect.iscoroutinefunction(embedder.embed):
            raise ConfigurationError(
                f"DRAM embedder {embedder!r} does not implement sagemem.embedding.Embedder: it "
                "needs a `dimensions` int and an `async def embed(texts) -> list[list[float]]`"
            )
        embedder_dimensions = embedder.dimensions
        if dimensions is not None and dimensions != embedder_dimensions:
            raise ConfigurationError(
                f"DRAM dimensions={dimensions} but the embedder {embedder!r} produces "
                f"{embedder_dimensions}; pass matching values (or leave dimensions out)"
            )
        if type(embedder_dimensions) is not int or not 1 <= embedder_dimensions <= DIMENSIONS_MAX:
            raise ConfigurationError(
                f"DRAM embedder {embedder!r} has dimensions={embedder_dimensions!r}; it must be "
                f"an int from 1 to {DIMENSIONS_MAX}"
            )
        if text_of is not None and not callable(text_of):
            raise ConfigurationError(f"DRAM text_of must be callable, got {text_of!r}")
        self.embedder: Final = embedder
        self.dimensions: Final = embedder_dimensions
        self._text_of: Final = text_of
        self._vector_schema = "public"  # replaced by the extension's schema on connect()
        self._sql_search = ""  # built on connect(), once the extension's schema is known

    # -- set-up ---------------------------------------------------------------------------

    async def _create_objects_locked(self, connection: asyncpg.Connection) -> None:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        schema: str | None = await connection.fetchval(
            "SELECT n.nspname FROM pg_extension AS e "
            "JOIN pg_namespace AS n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
        )
        if schema is None:
            raise ConfigurationError(
                "the pgvector extension `vector` could not be created; install pgvector on the "
                "Postgres server (the embedded server has it)"
            )
        self._vector_schema = schema
        await super()._create_objects_locked(connection)

    def _ddl(self) -> list[str]:
        vector = _quote(self._vector_schema)
        return [
            f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"',
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "namespace text NOT NULL, key text NOT NULL, value jsonb, "
            "version bigint NOT NULL CHECK (version >= 1), deleted boolean NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now(), "
            f"embedding {vector}.vector({self.dimensions}), "
            "PRIMARY KEY (namespace, key), "
            "CHECK (deleted = (value IS NULL)), CHECK (deleted = (embedding IS NULL)))",
            f"CREATE INDEX IF NOT EXISTS {self._table}_embedding_hnsw ON {self.table} "
            f"USING hnsw (embedding {vector}.vector_cosine_ops)",
        ]

    async def _check_objects(self, connection: asyncpg.Connection) -> None:
        existing: int | None = await connection.fetchval(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = $1::regclass "
            "AND attname = 'embedding' AND NOT attisdropped",
            self.table,
        )
        if existing != self.dimensions:
            raise ConfigurationError(
                f"table {self.table} stores embeddings of {existing} dimensions but this "
                f"DRAMTier's embedder produces {self.dimensions}; use another schema for "
                "another embedding size"
            )
        self._sql_search = (
            f"SELECT key, value::text, version, embedding OPERATOR({_quote(self._vector_schema)}"
            f".<=>) $2 AS distance FROM {self.table} "
            "WHERE namespace = $1 AND NOT deleted ORDER BY distance LIMIT $3"
        )

    async def _init_connection(self, connection: asyncpg.Connection) -> None:
        await register_vector(connection, schema=self._vector_schema)

    def _server_settings(self) -> dict[str, str]:
        # Without iterative scans an HNSW search filtered by namespace can return fewer rows
        # than asked for (the index yields ef_search candidates, the filter drops some).
        return {**super()._server_settings(), "hnsw.iterative_scan": "strict_order"}

    # -- embeddings -----------------------------------------------------------------------

    async def _extra_values(self, value: JSONValue, canonical_text: str) -> Sequence[object]:
        if self._text_of is None:
            text = _default_text_of(value, canonical_text)
        else:
            text = self._text_of(value)
            if type(text) is not str:
                raise ConfigurationError(
                    f"DRAM text_of returned {type(text).__name__} {text!r:.80}; it must return "
                    "the str to embed"
                )
        return [await self._embed_one(text)]

    async def _embed_one(self, text: str) -> list[float]:
        try:
            async with asyncio.timeout(self._command_timeout_s):
                vectors = await self.embedder.embed([text])
        except TimeoutError as error:
            raise TierUnavailable(
                f"DRAM embedder {self.embedder!r} did not answer within "
                f"{self._command_timeout_s} s; check the embedding service",
                tier=self.name,
            ) from error
        if type(vectors) is not list or len(vectors) != 1:
            raise ConfigurationError(
                f"DRAM embedder {self.embedder!r} returned {vectors!r:.80} for one text; it "
                "must return a list with one vector per text"
            )
        return self._checked_vector(vectors[0], f"embedder {self.embedder!r}")

    def _checked_vector(self, vector: object, source: str) -> list[float]:
        if not isinstance(vector, list) or len(vector) != self.dimensions:
            length = len(vector) if isinstance(vector, list) else type(vector).__name__
            raise InvalidValueError(
                f"vector from {source} has {length} components; this DRAMTier needs a list of "
                f"{self.dimensions} floats"
            )
        squares = 0.0
        for component in vector:
            if type(component) not in (float, int) or not math.isfinite(component):
                raise InvalidValueError(
                    f"vector from {source} has the component {component!r}; every component "
                    "must be a finite float"
                )
            squares += component * component
        if squares == 0.0:
            raise InvalidValueError(
                f"vector from {source} is all zeros; cosine distance needs a non-zero vector"
            )
        return [float(component) for component in vector]

    # -- search ---------------------------------------------------------------------------

    async def search(
        self, query: str | list[float], *, limit: int = 10, ef_search: int | None = None
    ) -> list[SearchHit]:
        """The live keys of this namespace closest in meaning to `query`, closest first.

        `query` is a text (embedded with the tier's embedder) or a vector of `dimensions`
        floats. `ef_search` (1 to 1000) widens the HNSW candidate list for this search only:
        higher is slower and more exact (pgvector's default is 40).
        """
        if type(limit) is not int or not 1 <= limit <= _SEARCH_LIMIT_MAX:
            raise InvalidValueError(
                f"search limit must be an int from 1 to {_SEARCH_LIMIT_MAX}, got {limit!r}"
            )
        if ef_search is not None and (
            type(ef_search) is not int or not 1 <= ef_search <= _EF_SEARCH_MAX
        ):
            raise InvalidValueError(
                f"ef_search must be None or an int from 1 to {_EF_SEARCH_MAX}, got {ef_search!r}"
            )
        if isinstance(query, str):
            pool = self._connected()  # before calling a possibly remote embedder
            vector = await self._embed_one(query)
        else:
            vector = self._checked_vector(query, "the query")
            pool = self._connected()
        try:
            async with pool.lease() as connection:
                if ef_search is None:
                    rows = await connection.fetch(self._sql_search, self.namespace, vector, limit)
                else:
                    async with connection.transaction():
                        await connection.execute(
                            "SELECT set_config('hnsw.ef_search', $1, true)", str(ef_search)
                        )
                        rows = await connection.fetch(
                            self._sql_search, self.namespace, vector, limit
                        )
        except asyncpg.InsufficientPrivilegeError as error:  # the role of a grant
            raise refused_by_server(self.name, "search", None, error) from error
        except POSTGRES_DRIVER_ERRORS as error:
            raise tier_unavailable(self.name, "search", error, hint=POSTGRES_HINT) from error
        return [SearchHit(row[0], decode_value(row[1]), int(row[2]), float(row[3])) for row in rows]
