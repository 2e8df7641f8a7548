"""DRAM: the semantic tier, Postgres + pgvector: exact lookup by key and hybrid search.

Rows live in `<schema>.dram_entries`, versioned exactly like L3 (same statements, same
tombstones, so versions only grow and compare-and-swap has the same semantics; see
`sagemem.tiers.l3`), plus, computed on every write from the value's text (`text_of`) and
stored by the same statement as the value (so a row's embedding and text index always
describe its current value): an `embedding vector(dimensions)` column from the tier's
`Embedder`, the text itself (`search_text`) and a generated `search_tsv tsvector` (English
configuration) with a GIN index. A tombstone clears all three.

`search()` is one SQL statement over one snapshot. In the default `hybrid` mode it fuses two
rankings of the live rows of the namespace by reciprocal rank fusion (RRF,
`score = sum 1 / (rrf_k + rank)`): cosine distance to the query's embedding through an HNSW
index (`vector_cosine_ops`, with pgvector's iterative index scan so the namespace filter cannot
starve the result), and an Okapi BM25 score of the query's words against `search_tsv` (any word
may match; IDF from the namespace's live rows; term frequencies from the tsvector's
positions). `vector` and `text` modes use one ranking alone. `where` keeps only rows whose JSON
value contains the given JSON (`value @> where`), so metadata stored in dict values filters at
the server; row-level security of a grant's role applies to every branch. Each hit carries its
key's version, read in the same snapshot as its value. The `vector` extension is created if
missing and its asyncpg codec is registered on every pooled connection.

Coherence of search: a row's value, version, embedding and text index change in one
statement, so a hit shows each key at one committed version with the embedding of that very
value; each search is a new snapshot, so one that starts after a write or delete returned
sees it, and a hit's version is never below one the same caller read from this tier before.

Indexing a home (`attach_home`, done by `MemoryHierarchy` for an L3Tier followed by a DRAMTier
on the same DSN): the hierarchy's home is L3, whose rows this tier cannot write. Postgres
cannot embed, so the home's commit statement cannot index in its own transaction; instead an
index row here records `home_version` and `home_value` (the value committed as that version,
embedded before the write) and is written before the write's call returns, and the search
statement joins each candidate with the home's row in the same snapshot: an index row is a hit
only while the home row holds exactly its version (live at it, or reserved at it by the owner
of a tier-0 write, whose value is still in the owner's L1). A hit thus carries the home's
current version, the one a `get` reports, and the value written as it; an index row that a
newer commit, a delete or a revoked grant has outdated is never a hit, so between a commit and
its index write a key is missing from searches, never stale. Index rows are tombstones of this
tier's own key-value view (`read` and `get` never see them). `reindex_home` indexes home rows
no index row matches (a writer that stopped between commit and index, a revoked owner's value
that the home gave a version of its own, writes from outside the hierarchy).

This module must never let an asyncpg exception escape: driver errors become
`TierUnavailable` with the driver's exception as the cause.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal, TypeVar

import asyncpg
from pgvector.asyncpg import register_vector

from sagemem._driver_errors import refused_by_server, tier_unavailable
from sagemem._renamed import UNSET, Unset, renamed
from sagemem.coherence.home import ensure_home_schema
from sagemem.embedding import DIMENSIONS_MAX, Embedder, HashingEmbedder
from sagemem.errors import ConfigurationError, InvalidValueError, SageMemError, TierUnavailable
from sagemem.tiers.l3 import (
    POSTGRES_DRIVER_ERRORS,
    POSTGRES_HINT,
    L3Tier,
    VersionedRowTier,
    jsonb_text,
)
from sagemem.values import VALUE_SIZE_MAX_BYTES, JSONValue, check_key, decode_value, encode_value

__all__ = ["SEARCH_MODES", "DRAMTier", "IndexEntry", "SearchHit", "SearchMode"]

_logger = logging.getLogger("sagemem.dram")
_T = TypeVar("_T")
SearchMode = Literal["hybrid", "vector", "text"]
SEARCH_MODES: Final[tuple[SearchMode, ...]] = ("hybrid", "vector", "text")
_SEARCH_LIMIT_MAX: Final = 1000
_EF_SEARCH_MAX: Final = 1000
_CANDIDATES_MAX: Final = 10_000
_TERM_STATISTICS_MAX: Final = 100_000  # cached document frequencies per tier
# A query word selects candidates when it is in at most this many rows, or 1/20 of them.
_SELECTIVE_ROWS_MIN: Final = 50
# ...and the selective words together select at most this many rows per candidate wanted.
_TEXT_CANDIDATE_ROWS_PER_CANDIDATE: Final = 4
_RRF_K_MAX: Final = 10_000
_WORD: Final = re.compile(r"\w+")
_GUESS_CHARS_MAX: Final = 2000  # the part of a query whose cached word counts are looked up
_GUESS_WORD_CHARS_MAX: Final = 40
# to_tsvector refuses texts whose tsvector would exceed 1 MiB; the words of the first
# 200,000 characters are what full-text search sees (the embedding sees what the model reads).
_SEARCH_TEXT_CHARS_MAX: Final = 200_000
# Okapi BM25 constants (the usual defaults).
_BM25_K1: Final = 1.2
_BM25_B: Final = 0.75


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result of `DRAMTier.search`: a live key, its value and version, and how close it is.

    `distance` is the cosine distance between the query and the key's embedding (0 identical
    direction, 1 unrelated, 2 opposite). `score` orders the hits, higher first: the RRF score
    in `hybrid` mode, the similarity (`1 - distance`) in `vector` mode, the BM25 score in
    `text` mode. `version` is the key's version in the same snapshot as `value`: for an entry
    of the home this tier indexes (see `DRAMTier.attach_home`), the home's version, the one a
    `get` through the hierarchy reports.
    """

    key: str
    value: JSONValue
    version: int
    distance: float
    score: float = 0.0

    @property
    def similarity(self) -> float:
        """Cosine similarity, `1 - distance` (1 for the same direction)."""
        return 1.0 - self.distance


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """A value prepared for `DRAMTier.index_home`: its JSON text, embedding and search text."""

    canonical_text: str
    value_json: str  # the JSON text stored (floats kept floats in JSONB, see jsonb_text)
    embedding: list[float]
    search_text: str


def _default_text_of(value: JSONValue, canonical_text: str) -> str:
    """The text embedded for `value`: a str value itself, anything else its JSON text."""
    return value if isinstance(value, str) else canonical_text


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# The home row `h` holds the version the index row `t` indexes: live at it, or reserved at it
# by an owner (a tier-0 write whose value is still in the owner's L1; the index row carries it).
_HOME_HOLDS_VERSION: Final = "h.version = t.home_version AND (NOT h.deleted OR h.owner IS NOT NULL)"


def _search_statements(
    table: str, vector_schema: str, home_table: str | None = None
) -> dict[SearchMode, str]:
    """The search statement of each mode, one snapshot each.

    Parameters: $1 namespace, $2 query vector, $3 limit, $4 candidates taken from each
    ranking, $5 the `where` JSON text or NULL (the `vector` mode stops here), $6 the query's
    lexemes, $7 their IDFs, $8 whether each is selective (see `_text_weights`; the `text`
    mode stops here), $9 RRF's k, $10 the weight of the text ranking (the vector's is 1).

    With `home_table` (the L3 table of a hierarchy whose home this tier indexes) the rows also
    include the home's index rows (`home_version` set, see `DRAMTier.index_home`): such a row
    is a hit only if the home's row is live at exactly `home_version` in the same snapshot, and
    the hit then carries the home's value and version; the tier's own live rows are hits as
    before.
    """
    distance = f"OPERATOR({vector_schema}.<=>)"
    where = "($5::text IS NULL OR t.value @> $5::text::jsonb)"
    if home_table is None:
        live = f"t.namespace = $1 AND NOT t.deleted AND {where}"
        value_sql, version_sql, joined, valid = "t.value", "t.version", "", "NOT t.deleted"
    else:
        # A row is a candidate if it has an embedding: the tier's own live rows and the home's
        # index rows (which carry the value the home committed as `home_version`).
        value_sql = "coalesce(t.home_value, t.value)"
        version_sql = "coalesce(t.home_version, t.version)"
        live = (
            "t.namespace = $1 AND t.embedding IS NOT NULL AND "
            f"($5::text IS NULL OR {value_sql} @> $5::text::jsonb)"
        )
        joined = (
            f"LEFT JOIN {home_table} AS h ON r.hv IS NOT NULL AND h.namespace = $1 "
            f"AND h.key = r.key AND {_HOME_HOLDS_VERSION.replace('t.home_version', 'r.hv')} "
        )
        # A candidate without a home version is a live row of this tier's own (the table's
        # check: a row with an embedding and no home version is not a tombstone).
        valid = "(r.hv IS NULL OR h.key IS NOT NULL)"
    # With a home, each ranked key carries its index row's home version (`hv`), so checking
    # it against the home needs no second visit of this table.
    hv_select = "" if home_table is None else ", t.home_version AS hv"
    hv = "" if home_table is None else ", hv"
    vector_ranked = (
        f"vector_ranked AS (SELECT key{hv}, row_number() OVER (ORDER BY d, key) AS rank FROM ("
        f"SELECT t.key{hv_select}, t.embedding {distance} $2 AS d FROM {table} AS t WHERE {live} "
        "ORDER BY d LIMIT $4) AS nearest)"
    )
    # BM25 over the tsvector, in a form the GIN index keeps cheap: candidates are the rows
    # holding a selective lexeme (in at most 50 rows or 1/20 of them, at most 4 candidates'
    # worth of rows for all of them; see DRAMTier._text_weights), so a common word such as a
    # speaker's name adds to a score but does not make most rows candidates; each candidate
    # scores the IDFs of all query lexemes it holds, with BM25's saturation and length
    # normalisation for a term frequency of one (repeated words count once), the average
    # length taken over the candidates.
    text_ranked = (
        "weights AS MATERIALIZED (SELECT quote_literal(w.lexeme)::tsquery AS term, w.idf, "
        "w.selective FROM unnest($6::text[], $7::float8[], $8::bool[]) "
        "AS w(lexeme, idf, selective)), "
        f"text_matched AS (SELECT t.key{hv_select}, length(t.search_tsv)::float8 AS dl, "
        "(SELECT sum(w.idf) FROM weights AS w WHERE t.search_tsv @@ w.term) AS idf_sum "
        f"FROM {table} AS t WHERE {live} AND t.search_tsv @@ (SELECT "
        "string_agg(w.term::text, ' | ')::tsquery FROM weights AS w WHERE w.selective)), "
        f"text_scored AS (SELECT key{hv}, idf_sum * "
        f"{_BM25_K1 + 1} / (1 + {_BM25_K1} * (1 - {_BM25_B} + {_BM25_B} * dl / "
        "greatest(avg(dl) OVER (), 1))) AS score FROM text_matched), "
        f"text_ranked AS (SELECT key{hv}, score, row_number() OVER (ORDER BY score DESC, key) "
        f"AS rank FROM (SELECT key{hv}, score FROM text_scored ORDER BY score DESC, key LIMIT $4) "
        "AS best)"
    )

    def finish(ranked: str) -> str:
        select = (
            f"SELECT t.key, {value_sql}::text, {version_sql}, t.embedding {distance} $2, "
            "r.score FROM "
        )
        if home_table is None:
            return (
                select + f"({ranked}) AS r JOIN {table} AS t ON t.namespace = $1 "
                f"AND t.key = r.key WHERE {valid} ORDER BY r.score DESC, t.key LIMIT $3"
            )
        # The limit applies after each ranked key is checked against its home row (so an
        # outdated index row takes no place among the hits); values and distances are then
        # read for the `limit` hits only.
        return (
            select + f"(SELECT r.key, r.score FROM ({ranked}) AS r {joined}WHERE {valid} "
            f"ORDER BY r.score DESC, r.key LIMIT $3) AS r JOIN {table} AS t "
            "ON t.namespace = $1 AND t.key = r.key ORDER BY r.score DESC, t.key"
        )

    # Without a home every ranked key is a hit: the best `limit` are chosen before the join.
    top = " ORDER BY score DESC, key LIMIT $3" if home_table is None else ""
    max_hv = "" if home_table is None else ", max(hv) AS hv"
    rrf = (
        f"SELECT key{max_hv}, sum(weight / ($9 + rank)) AS score FROM (SELECT key{hv}, rank, "
        f"1.0::float8 AS weight FROM vector_ranked UNION ALL SELECT key{hv}, rank, $10::float8 "
        f"FROM text_ranked) AS ranks GROUP BY key{top}"
    )
    return {
        "hybrid": f"WITH {vector_ranked}, {text_ranked} " + finish(rrf),
        "vector": f"WITH {vector_ranked} "
        + finish(f"SELECT key{hv}, -rank::float8 AS score FROM vector_ranked{top}"),
        "text": f"WITH {text_ranked} " + finish(f"SELECT key{hv}, score FROM text_ranked{top}"),
    }


def _statistics_statements(table: str, *, with_home: bool) -> tuple[str, str, str]:
    """The query's lexemes, the document frequencies of lexemes, and both in one round trip.

    The first takes $1 the text. The second takes $1 namespace, $2 lexemes, $3 whether the
    namespace's live row count is wanted (else NULL). The third takes $1 namespace, $2 the
    text, $3 lexemes whose frequency is known (not counted again), $4 whether the row count is
    wanted; it returns the text's lexemes, their frequencies (NULL for the known ones) and
    the row count. Frequencies come from the GIN index plus a visit of each matching row,
    which is why `DRAMTier` caches them. With a home, the home's index rows count too (they
    weigh words: whether each is still current does not matter here).
    """
    live = "t.namespace = $1 AND " + ("t.embedding IS NOT NULL" if with_home else "NOT t.deleted")
    lexemes = (
        "SELECT coalesce(array_agg(DISTINCT lexeme ORDER BY lexeme), '{}') "
        "FROM unnest(to_tsvector('english'::regconfig, $1))"
    )
    count = (
        f"(SELECT count(*) FROM {table} AS t WHERE {live} "
        "AND t.search_tsv @@ quote_literal(u.lexeme)::tsquery)"
    )
    rows = f"CASE WHEN $3::bool THEN (SELECT count(*) FROM {table} AS t WHERE {live}) END"
    frequencies = (
        f"SELECT array(SELECT {count} FROM unnest($2::text[]) WITH ORDINALITY AS "
        f"u(lexeme, position) ORDER BY u.position), {rows}"
    )
    # CASE evaluates the count only for a lexeme that is not known.
    terms = (
        "SELECT coalesce(array_agg(u.lexeme ORDER BY u.lexeme), '{}'), "
        f"coalesce(array_agg(CASE WHEN u.lexeme = ANY($3::text[]) THEN NULL ELSE {count} END "
        f"ORDER BY u.lexeme), '{{}}'), {rows.replace('$3', '$4')} "
        "FROM unnest(tsvector_to_array(to_tsvector('english'::regconfig, $2))) AS u(lexeme)"
    )
    return lexemes, frequencies, terms


def _known_stems(text: str, known: dict[str, tuple[int, float]]) -> list[str]:
    """The cached lexemes that the query `text` may contain, found without the server.

    English stems are mostly a prefix of their word, or a prefix plus `i` ("studies" ->
    "studi"); a lexeme of the query missed here is counted again, one listed here that the
    query lacks is ignored, so this only saves work.
    """
    stems: set[str] = set()
    # Bounded work for a long query (its other words are simply counted by the server).
    for word in _WORD.findall(text[:_GUESS_CHARS_MAX].casefold()):
        for end in range(1, min(len(word), _GUESS_WORD_CHARS_MAX) + 1):
            prefix = word[:end]
            for stem in (prefix, prefix + "i"):
                if stem in known:
                    stems.add(stem)
    return sorted(stems)


@dataclass(slots=True)
class _TermStatistics:
    """Cached BM25 statistics of one tier: live rows and document frequencies, with their age."""

    rows: int = 0
    rows_at: float = -math.inf
    frequencies: dict[str, tuple[int, float]] = field(default_factory=dict)


class DRAMTier(VersionedRowTier):
    """The semantic tier: versioned JSON values with embeddings, searchable by meaning.

    `dsn=None` takes `SAGEMEM_POSTGRES_DSN`, else the embedded server, when `connect()` runs.
    The tier owns its connection pool (created by `connect()`, closed by `aclose()`) and creates
    the `vector` extension, schema, table and HNSW index if they are missing. `embedder`
    defaults to `HashingEmbedder(dimensions)` (deterministic, no model); `dimensions` defaults
    to the embedder's. One schema holds one embedding size: connecting with another size than
    the existing table's raises `ConfigurationError`. `text_of(value)` chooses the text to
    embed (default: a str value itself, anything else its canonical JSON text). The embedder
    gets at most `command_timeout_s` per call. Full-text ranking caches the namespace's row
    count and each query word's document frequency (0: never); a figure older than
    `text_statistics_ttl_s` is still used while a task of the tier counts it again: they only
    weigh words in the ranking, so a slightly old figure changes an order at most, never which
    value or version a hit carries. The last `query_cache_size` query texts' embeddings and
    words are kept (0: none), so a repeated query is not embedded again; the embedder must be
    deterministic (all of `sagemem.embedders` are).
    """

    name: str = "DRAM"
    _table: ClassVar[str] = "dram_entries"
    _extra_columns: ClassVar[tuple[str, ...]] = (
        "embedding",
        "search_text",
        "home_version",
        "home_value",
    )

    def __init__(
        self,
        postgres_dsn: str | None = None,
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
        text_statistics_ttl_s: float = 10.0,
        query_cache_size: int = 1024,
        dsn: str | Unset | None = UNSET,
    ) -> None:
        super().__init__(
            renamed("DRAMTier", "postgres_dsn", postgres_dsn, None, "dsn", dsn, deprecated=False),
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
        if type(text_statistics_ttl_s) not in (int, float) or not (
            0 <= text_statistics_ttl_s <= 86_400
        ):
            raise ConfigurationError(
                "DRAM text_statistics_ttl_s must be a number of seconds from 0 to 86400, got "
                f"{text_statistics_ttl_s!r}"
            )
        self._text_statistics_ttl_s: Final = float(text_statistics_ttl_s)
        self._term_statistics = _TermStatistics()
        self._recount: asyncio.Task[None] | None = None
        if text_of is not None and not callable(text_of):
            raise ConfigurationError(f"DRAM text_of must be callable, got {text_of!r}")
        self.embedder: Final = embedder
        self.dimensions: Final = embedder_dimensions
        self._text_of: Final = text_of
        self._vector_schema = "public"  # replaced by the extension's schema on connect()
        self._sql_search: dict[SearchMode, str] = {}  # built on connect()
        self._sql_lexemes, self._sql_frequencies, self._sql_terms = _statistics_statements(
            self.table, with_home=False
        )
        self._home: L3Tier | None = None  # see attach_home()
        self._sql_index = self._sql_unindex = self._sql_unindex_any = ""
        self._sql_unindex_all = self._sql_unindexed = ""
        # The last query_cache_size queries' embeddings and lexemes (both depend on the text
        # alone), so a repeated query costs neither the embedder nor a round trip.
        self._query_vectors: OrderedDict[str, list[float]] = OrderedDict()
        self._query_lexemes: OrderedDict[str, list[str]] = OrderedDict()
        if type(query_cache_size) is not int or not 0 <= query_cache_size <= 1_000_000:
            raise ConfigurationError(
                f"DRAM query_cache_size must be an int from 0 to 1000000, got {query_cache_size!r}"
            )
        self._query_cache_size: Final = query_cache_size

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
            "PRIMARY KEY (namespace, key), CHECK (deleted = (value IS NULL)))",
            f"CREATE INDEX IF NOT EXISTS {self._table}_embedding_hnsw ON {self.table} "
            f"USING hnsw (embedding {vector}.vector_cosine_ops)",
            # Added by ALTER so that a table created by an older sagemem gains them (its
            # existing rows are found by vector search only until they are written again).
            f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS search_text text",
            f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS search_tsv tsvector "
            "GENERATED ALWAYS AS (to_tsvector('english'::regconfig, coalesce(search_text, ''))) "
            "STORED",
            # fastupdate off: without it new rows wait in GIN's pending list, which every
            # search scans linearly until a vacuum merges it (milliseconds after a burst of
            # writes); a write pays a little more instead.
            f"CREATE INDEX IF NOT EXISTS {self._table}_search_tsv_gin ON {self.table} "
            "USING gin (search_tsv) WITH (fastupdate = off)",
            # Lets BM25's document count be an index-only scan.
            f"CREATE INDEX IF NOT EXISTS {self._table}_live ON {self.table} (namespace) "
            "WHERE NOT deleted",
            # The home version a row indexes (see index_home): such a row is a tombstone of
            # this tier (no value of its own) with an embedding. Older tables required
            # `deleted = (embedding IS NULL)`; that check is replaced by one allowing it.
            f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS home_version bigint, "
            "ADD COLUMN IF NOT EXISTS home_value jsonb",
            "DO $$ DECLARE name text; BEGIN "
            "FOR name IN SELECT conname FROM pg_constraint WHERE conrelid = "
            f"'{self.table}'::regclass AND contype = 'c' AND "
            "pg_get_constraintdef(oid) = 'CHECK ((deleted = (embedding IS NULL)))' LOOP "
            f"EXECUTE format('ALTER TABLE {self.table} DROP CONSTRAINT %I', name); "
            "END LOOP; "
            "IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = "
            f"'{self.table}'::regclass AND conname = '{self._table}_embedding_check') "
            f"THEN ALTER TABLE {self.table} ADD CONSTRAINT {self._table}_embedding_check "
            "CHECK ((deleted AND home_version IS NULL) = (embedding IS NULL) "
            "AND (home_version IS NULL) = (home_value IS NULL)); END IF; END $$",
            f"CREATE INDEX IF NOT EXISTS {self._table}_searchable ON {self.table} (namespace) "
            "WHERE embedding IS NOT NULL",
        ]

    def _required_columns(self) -> tuple[str, ...]:
        return (*super()._required_columns(), "search_tsv")

    async def _objects_exist(self, connection: asyncpg.Connection) -> bool:
        if not await super()._objects_exist(connection):
            return False
        # A table of an older sagemem has every column but lacks the new check (see _ddl).
        found: bool = await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = $1::regclass "
            "AND conname = $2)",
            self.table,
            f"{self._table}_embedding_check",
        )
        return found

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
        home = self._home
        if home is not None:
            found = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", home.table)
            if not found:
                raise ConfigurationError(
                    f"DRAM tier indexes the home {home!r}, but its table {home.table} is not in "
                    "this tier's database: the semantic tier and L3 must use the same Postgres "
                    "database (connect L3 first)"
                )
            # A hit needs the home row's owner (a key reserved by a tier-0 write): the
            # protocol's columns, which the home adds to the L3 table where missing.
            await ensure_home_schema(home.table, connection.fetch)
        self._sql_search = _search_statements(
            self.table, _quote(self._vector_schema), None if home is None else home.table
        )

    async def _init_connection(self, connection: asyncpg.Connection) -> None:
        await register_vector(connection, schema=self._vector_schema)

    def _server_settings(self) -> dict[str, str]:
        # Without iterative scans an HNSW search filtered by namespace can return fewer rows
        # than asked for (the index yields ef_search candidates, the filter drops some).
        # Custom plans always: after five executions of a prepared search Postgres may switch
        # to its generic plan when the estimates favour it, and for the hybrid statement over
        # some data that plan is 10x slower (measured: 52 ms instead of 5.9 ms per search over
        # 10,000 entries, depending on the tables' statistics); planning costs ~0.4 ms.
        return {
            **super()._server_settings(),
            "hnsw.iterative_scan": "strict_order",
            "plan_cache_mode": "force_custom_plan",
        }

    # -- embeddings -----------------------------------------------------------------------

    async def _extra_values(self, value: JSONValue, canonical_text: str) -> Sequence[object]:
        text = self._text(value, canonical_text)
        search_text = text[:_SEARCH_TEXT_CHARS_MAX].replace("\x00", " ")
        return [await self._embed_one(text), search_text, None, None]

    def _text(self, value: JSONValue, canonical_text: str) -> str:
        if self._text_of is None:
            return _default_text_of(value, canonical_text)
        text = self._text_of(value)
        if type(text) is not str:
            raise ConfigurationError(
                f"DRAM text_of returned {type(text).__name__} {text!r:.80}; it must return "
                "the str to embed"
            )
        return text

    # -- indexing a home ------------------------------------------------------------------

    def attach_home(self, home: L3Tier) -> None:
        """Make this tier the search index of `home` (the hierarchy's L3), before `connect()`.

        `MemoryHierarchy` calls this when it holds an L3Tier and then this tier on the same
        DSN, and keeps the index current: `index_home` after every write committed at the
        home, `unindex_home` after deletes. A search then also returns the home's entries,
        each with the home's value and version as one snapshot shows them; an index row whose
        home row has another version (a newer write not indexed yet, a delete) is never a hit.
        The home must be in this tier's database and namespace.
        """
        if not isinstance(home, L3Tier):
            raise ConfigurationError(f"attach_home needs an L3Tier, got {type(home).__name__}")
        if home.namespace != self.namespace:
            raise ConfigurationError(
                f"DRAM tier of namespace {self.namespace!r} cannot index the home of namespace "
                f"{home.namespace!r}"
            )
        if self._pool is not None:
            raise ConfigurationError("attach_home must be called before the DRAM tier connects")
        self._home = home
        self._sql_lexemes, self._sql_frequencies, self._sql_terms = _statistics_statements(
            self.table, with_home=True
        )
        self._sql_index = (
            f"INSERT INTO {self.table} AS t (namespace, key, value, version, deleted, "
            "updated_at, embedding, search_text, home_version, home_value) "
            "VALUES ($1, $2, NULL, 1, true, now(), $3, $4, $5, $6::text::jsonb) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = NULL, deleted = true, "
            "version = t.version + 1, updated_at = now(), embedding = excluded.embedding, "
            "search_text = excluded.search_text, home_version = excluded.home_version, "
            "home_value = excluded.home_value "
            "WHERE t.home_version IS NULL OR t.home_version < excluded.home_version "
            "RETURNING t.home_version"
        )
        # An index row whose home row is no longer live at its version: dropped (kept as a
        # plain tombstone, so this tier's own versions of the key keep growing).
        outdated = (
            "t.home_version IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
            f"{home.table} AS h WHERE h.namespace = t.namespace AND h.key = t.key "
            f"AND {_HOME_HOLDS_VERSION})"
        )
        drop = (
            f"UPDATE {self.table} AS t SET embedding = NULL, search_text = NULL, "
            "home_version = NULL, home_value = NULL, version = t.version + 1, "
            "updated_at = now() WHERE "
        )
        self._sql_unindex = drop + f"t.namespace = $1 AND t.key = $2 AND {outdated}"
        self._sql_unindex_any = (
            drop + "t.namespace = $1 AND t.key = $2 AND t.home_version IS NOT NULL"
        )
        self._sql_unindex_all = drop + f"t.namespace = $1 AND {outdated}"
        # Live home rows nobody owns whose current version has no index row.
        self._sql_unindexed = (
            f"SELECT h.key, h.value::text, h.version FROM {home.table} AS h "
            f"LEFT JOIN {self.table} AS t ON t.namespace = h.namespace AND t.key = h.key "
            "WHERE h.namespace = $1 AND NOT h.deleted AND h.owner IS NULL "
            "AND (t.key IS NULL OR (t.deleted AND t.home_version IS DISTINCT FROM h.version)) "
            "ORDER BY h.key LIMIT $2"
        )

    @property
    def home(self) -> L3Tier | None:
        """The L3 tier this tier indexes (see `attach_home`), or None."""
        return self._home

    async def prepare_index(self, value: JSONValue) -> IndexEntry:
        """Embed `value` for `index_home` (call before the write, so a failing embedder
        fails the write before anything changed)."""
        canonical_text = encode_value(value, size_max_bytes=self.value_size_max_bytes)
        self._connected()
        text = self._text(value, canonical_text)
        return IndexEntry(
            canonical_text,
            jsonb_text(value, canonical_text),
            await self._embed_one(text),
            text[:_SEARCH_TEXT_CHARS_MAX].replace("\x00", " "),
        )

    async def index_home(self, key: str, version: int, entry: IndexEntry) -> bool:
        """Index the home's `version` of `key`, whose value `entry` was prepared from.

        Versions only move forward: an index row of a newer version is kept (False). The row
        is a hit of `search` only while the home's row is live at exactly `version`.
        """
        check_key(key)
        self._require_home()
        if type(version) is not int or version < 1:
            raise InvalidValueError(f"a home version is an int >= 1, got {version!r}")
        row = await self._fetchrow(
            "index",
            key,
            self._sql_index,
            self.namespace,
            key,
            entry.embedding,
            entry.search_text,
            version,
            entry.value_json,
        )
        return row is not None

    async def unindex_home(self, key: str, *, outdated_only: bool = True) -> bool:
        """Drop the index row of `key` if the home no longer holds its version (a delete, a
        newer write); with `outdated_only=False`, drop it whatever the home holds."""
        check_key(key)
        self._require_home()
        sql = self._sql_unindex if outdated_only else self._sql_unindex_any
        row = await self._fetchrow("unindex", key, sql + " RETURNING t.key", self.namespace, key)
        return row is not None

    async def reindex_home(self, limit: int = 1000) -> int:
        """Index up to `limit` live home entries that have no index row for their version (a
        writer that stopped between its commit and its index write, a revoked owner's value,
        a home written by a process without this tier); return how many were indexed.

        Keys owned by an agent are skipped (their row may hold an older value than its
        version names). Keys holding a value of this tier's own are left alone.
        """
        self._require_home()
        if type(limit) is not int or not 1 <= limit <= 100_000:
            raise InvalidValueError(
                f"reindex_home limit must be an int from 1 to 100000, got {limit!r}"
            )
        rows = await self._fetch("reindex", None, self._sql_unindexed, self.namespace, limit)
        indexed = 0
        for row in rows:
            entry = await self.prepare_index(decode_value(row[1]))
            indexed += await self.index_home(str(row[0]), int(row[2]), entry)
        return indexed

    async def clear(self) -> None:
        """Delete every live key of this namespace; with a home, also drop the index rows the
        home no longer backs."""
        await super().clear()
        if self._home is not None:
            await self._execute("clear index", None, self._sql_unindex_all, self.namespace)

    def _require_home(self) -> L3Tier:
        if self._home is None:
            raise ConfigurationError(
                "this DRAM tier indexes no home: call attach_home(l3) before connect() (a "
                "MemoryHierarchy does it for an L3Tier and a DRAMTier on the same DSN)"
            )
        return self._home

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

    async def _query_vector(self, query: str | list[float]) -> list[float]:
        """The query's embedding, from the cache of the last `query_cache_size` queries."""
        if not isinstance(query, str):
            return self._checked_vector(query, "the query")
        vector = self._cached_query_vector(query)
        if vector is None:
            vector = await self._embed_one(query)
            self._remember(self._query_vectors, query, vector)
        return vector

    def _cached_query_vector(self, query: str) -> list[float] | None:
        cache = self._query_vectors
        vector = cache.get(query)
        if vector is not None:
            cache.move_to_end(query)
        return vector

    async def _weights_and_vector(
        self, connection: asyncpg.Connection, query: str | list[float], text: str, candidates: int
    ) -> tuple[tuple[list[str], list[float], list[bool]], list[float]]:
        """The query's text weights and embedding, the embedding computed while the server
        answers the statistics statement (sent first)."""
        weights = asyncio.ensure_future(self._text_weights(connection, text, candidates))
        await asyncio.sleep(0)  # the task sends its statement
        try:
            vector = await self._query_vector(query)
        except BaseException:
            weights.cancel()
            await asyncio.wait([weights])
            if not weights.cancelled():
                weights.exception()  # retrieved: the embedder's failure is the one raised
            raise
        return await weights, vector

    def _remember(self, cache: OrderedDict[str, _T], query: str, item: _T) -> None:
        if self._query_cache_size:
            cache[query] = item
            if len(cache) > self._query_cache_size:
                cache.popitem(last=False)

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
        self,
        query: str | list[float],
        *,
        limit: int = 10,
        mode: SearchMode | None = None,
        where: dict[str, JSONValue] | None = None,
        candidates: int | None = None,
        rrf_k: int = 60,
        text_weight: float = 1.0,
        ef_search: int | None = None,
    ) -> list[SearchHit]:
        """The live keys of this namespace that best match `query`, best first.

        `query` is a text (embedded with the tier's embedder, and matched word by word in
        `hybrid` and `text` modes) or a vector of `dimensions` floats (`vector` mode only).
        `mode`: `hybrid` (the default for a text) fuses vector and BM25 rankings by reciprocal
        rank fusion, `vector` (the default for a vector) ranks by cosine distance, `text` by
        BM25 alone. `where` keeps only keys whose JSON value
        contains it (`{"kind": "turn"}` matches dict values with that item). `candidates` (at
        least `limit`; default `max(50, 5 * limit)`) is how many keys each ranking contributes
        before fusion; `rrf_k` is RRF's damping constant (60 as in the RRF paper) and
        `text_weight` multiplies the text ranking's share (`weight / (rrf_k + rank)`; the
        vector ranking's weight is 1). `ef_search`
        (1 to 1000) widens the HNSW candidate list for this search only (pgvector's default 40).
        """
        if type(limit) is not int or not 1 <= limit <= _SEARCH_LIMIT_MAX:
            raise InvalidValueError(
                f"search limit must be an int from 1 to {_SEARCH_LIMIT_MAX}, got {limit!r}"
            )
        if mode is None:
            mode = "hybrid" if isinstance(query, str) else "vector"
        if mode not in SEARCH_MODES:
            raise InvalidValueError(f"search mode must be one of {SEARCH_MODES}, got {mode!r}")
        if candidates is None:
            candidates = min(_CANDIDATES_MAX, max(50, 5 * limit))
        elif type(candidates) is not int or not limit <= candidates <= _CANDIDATES_MAX:
            raise InvalidValueError(
                f"search candidates must be an int from limit ({limit}) to {_CANDIDATES_MAX}, "
                f"got {candidates!r}"
            )
        if type(rrf_k) is not int or not 1 <= rrf_k <= _RRF_K_MAX:
            raise InvalidValueError(
                f"search rrf_k must be an int from 1 to {_RRF_K_MAX}, got {rrf_k!r}"
            )
        if type(text_weight) not in (int, float) or not 0 <= text_weight <= 100:
            raise InvalidValueError(
                f"search text_weight must be a number from 0 to 100, got {text_weight!r}"
            )
        if ef_search is not None and (
            type(ef_search) is not int or not 1 <= ef_search <= _EF_SEARCH_MAX
        ):
            raise InvalidValueError(
                f"ef_search must be None or an int from 1 to {_EF_SEARCH_MAX}, got {ef_search!r}"
            )
        where_json: str | None = None
        if where is not None:
            if type(where) is not dict:
                raise InvalidValueError(
                    f"search where must be None or a dict the matching values contain, got "
                    f"{type(where).__name__} {where!r:.80}"
                )
            where_json = jsonb_text(
                where, encode_value(where, size_max_bytes=self.value_size_max_bytes)
            )
        vector: list[float] | None
        if isinstance(query, str):
            pool = self._connected()  # before calling a possibly remote embedder
            vector = self._cached_query_vector(query)
            text = query.replace("\x00", " ")[:_SEARCH_TEXT_CHARS_MAX]
        else:
            if mode != "vector":
                raise InvalidValueError(
                    f"a vector query needs mode='vector' (got mode={mode!r}); pass a text to "
                    "search by words too"
                )
            vector = self._checked_vector(query, "the query")
            text = ""
            pool = self._connected()
        sql = self._sql_search[mode]
        try:
            async with pool.lease() as connection:
                weights: tuple[list[str], list[float], list[bool]] | None = None
                if mode != "vector" and vector is None:
                    # The query's embedding overlaps its statistics round trip.
                    weights, vector = await self._weights_and_vector(
                        connection, query, text, candidates
                    )
                elif mode != "vector":
                    weights = await self._text_weights(connection, text, candidates)
                if vector is None:
                    vector = await self._query_vector(query)
                arguments: list[object] = [self.namespace, vector, limit, candidates, where_json]
                if weights is not None:
                    arguments += weights
                if mode == "hybrid":
                    arguments += [rrf_k, float(text_weight)]
                if ef_search is None:
                    rows = await connection.fetch(sql, *arguments)
                else:
                    async with connection.transaction():
                        await connection.execute(
                            "SELECT set_config('hnsw.ef_search', $1, true)", str(ef_search)
                        )
                        rows = await connection.fetch(sql, *arguments)
        except asyncpg.InsufficientPrivilegeError as error:  # the role of a grant
            raise refused_by_server(self.name, "search", None, error) from error
        except POSTGRES_DRIVER_ERRORS as error:
            raise tier_unavailable(self.name, "search", error, hint=POSTGRES_HINT) from error
        hits: list[SearchHit] = []
        for row in rows:
            distance = float(row[3])
            score = 1.0 - distance if mode == "vector" else float(row[4])
            hits.append(SearchHit(row[0], decode_value(row[1]), int(row[2]), distance, score))
        return hits

    async def _count_terms(
        self, connection: asyncpg.Connection, lexemes: list[str], rows: bool
    ) -> None:
        """Count the live rows holding each of `lexemes` (and all live rows if `rows`)."""
        record = await connection.fetchrow(self._sql_frequencies, self.namespace, lexemes, rows)
        assert record is not None  # a SELECT without FROM returns one row
        self._store_counts(list(zip(lexemes, record[0], strict=True)), record[1])

    def _store_counts(self, counts: list[tuple[str, int]], rows: int | None) -> None:
        """Cache document frequencies (and the live row count unless None), dated now."""
        statistics = self._term_statistics
        now = time.monotonic()
        for lexeme, count in counts:
            statistics.frequencies[lexeme] = (int(count), now)
        if rows is not None:
            statistics.rows, statistics.rows_at = int(rows), now

    def _count_terms_later(self, lexemes: list[str], rows: bool) -> None:
        """Recount expired statistics in a task of this tier (one at a time; `aclose` stops
        it); a failure leaves the old figures, and a later search schedules them again."""
        if self._recount is not None and not self._recount.done():
            return

        async def recount() -> None:
            try:
                async with self._connected().lease() as connection:
                    await self._count_terms(connection, lexemes, rows)
            except (SageMemError, *POSTGRES_DRIVER_ERRORS) as error:
                _logger.debug("DRAM: recounting term statistics failed: %r", error)

        self._recount = asyncio.get_running_loop().create_task(
            recount(), name="sagemem DRAM term statistics"
        )

    async def aclose(self) -> None:
        """Stop a statistics recount in progress, then close the pool (idempotent)."""
        recount, self._recount = self._recount, None
        if recount is not None:
            recount.cancel()
            await asyncio.wait([recount])
        await super().aclose()

    async def _text_weights(
        self, connection: asyncpg.Connection, text: str, candidates: int
    ) -> tuple[list[str], list[float], list[bool]]:
        """The query's lexemes with their BM25 IDF and whether each selects candidates.

        IDF is `ln(1 + (N - df + 0.5) / (df + 0.5))` over the namespace's live rows; a lexeme
        is selective when it is in at most 50 rows or 1/20 of them, or is the query's rarest,
        and the selective lexemes, taken rarest first, hold at most `4 * candidates` rows
        together (the rarest always selects). Row count and frequencies come from the cache;
        a query not seen before costs one round trip, which finds its lexemes and counts the
        ones never counted; figures older than `text_statistics_ttl_s` are still used while a
        background task counts them again (they weigh words; waiting ~1 ms per word for fresh
        ones doubled a search's median).
        """
        statistics = self._term_statistics
        known = statistics.frequencies
        ttl_s = self._text_statistics_ttl_s
        rows_missing = ttl_s == 0 or statistics.rows_at == -math.inf
        fresh: set[str] = set()  # counted by this call
        lexemes = self._query_lexemes.get(text)
        if lexemes is None:
            # One round trip: the lexemes, and the counts of those the cache may not hold.
            guess = [] if ttl_s == 0 else _known_stems(text, known)
            record = await connection.fetchrow(
                self._sql_terms, self.namespace, text, guess, rows_missing
            )
            assert record is not None  # an aggregate without GROUP BY returns one row
            lexemes = list(record[0])
            counted = [
                (lexeme, count)
                for lexeme, count in zip(lexemes, record[1], strict=True)
                if count is not None
            ]
            self._store_counts(counted, record[2])
            fresh = {lexeme for lexeme, _ in counted}
            rows_missing = False
            self._remember(self._query_lexemes, text, lexemes)
        else:
            self._query_lexemes.move_to_end(text)
        if not lexemes:
            return [], [], []
        if len(known) > _TERM_STATISTICS_MAX:  # bounded memory: keep this query's words
            kept = {lexeme: known[lexeme] for lexeme in lexemes if lexeme in known}
            known.clear()
            known.update(kept)
        oldest = time.monotonic() - ttl_s
        missing = [
            lexeme
            for lexeme in lexemes
            if lexeme not in fresh and (ttl_s == 0 or lexeme not in known)
        ]
        if missing or rows_missing:
            await self._count_terms(connection, missing, rows_missing)
        if ttl_s:
            expired = [lexeme for lexeme in lexemes if known[lexeme][1] < oldest]
            rows_expired = statistics.rows_at < oldest
            if expired or rows_expired:
                self._count_terms_later(expired, rows_expired)
        frequencies = {lexeme: statistics.frequencies[lexeme][0] for lexeme in lexemes}
        present = [lexeme for lexeme in lexemes if frequencies[lexeme] > 0]
        if not present:
            return [], [], []
        rarest = min(frequencies[lexeme] for lexeme in present)
        total = max(statistics.rows, max(frequencies[lexeme] for lexeme in present))
        idfs = [
            math.log(1 + (total - frequencies[lexeme] + 0.5) / (frequencies[lexeme] + 0.5))
            for lexeme in present
        ]
        threshold = max(total / 20, rarest, _SELECTIVE_ROWS_MIN)
        # Selective lexemes, rarest first, while the rows holding them stay within the budget
        # (the rarest always selects): the BM25 ranking scores every candidate row, so a long
        # query of moderately common words would otherwise score a thousand rows or more.
        budget = max(_SELECTIVE_ROWS_MIN, _TEXT_CANDIDATE_ROWS_PER_CANDIDATE * candidates)
        selective = [False] * len(present)
        selected_rows = 0
        for index in sorted(range(len(present)), key=lambda i: (frequencies[present[i]], i)):
            rows = frequencies[present[index]]
            if rows > threshold or (selected_rows and selected_rows + rows > budget):
                continue
            selective[index] = True
            selected_rows += rows
        return present, idfs, selective
