"""Request and response bodies.

Requests are strict: JSON types must match exactly (``"k": "10"`` or ``"k": true`` is a 422) and unknown
fields are rejected with 422 everywhere (``extra="forbid"``), so a misspelt option never goes unnoticed.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from scalingnote.index.docstore import Filter
from scalingnote.index.query import Mode, SearchSpec
from scalingnote.index.store import Hit

MAX_K = 1000
MAX_FIELDS = 32


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("query must contain a non-whitespace character")
    return text


Query = Annotated[str, Field(min_length=1, description="Free-text query."), AfterValidator(_not_blank)]
K = Annotated[int, Field(ge=1, le=MAX_K, description="Number of results.")]


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class SearchOptions(Request):
    """How to search, beyond the query: the same for ``/search`` and for every query of ``/search/batch``."""

    k: K = 10
    mode: Mode | None = Field(
        None, description="dense, bm25 or hybrid (BM25 modes need an index built with --bm25). Default: hybrid "
        "when the index holds BM25, else dense."
    )  # fmt: skip
    filter: Filter | None = Field(None, description="Search only among the documents this filter matches.")
    fields: list[str] | None = Field(
        None, max_length=MAX_FIELDS, description="Document fields to return per hit: title, text, metadata, or a "
        "(dotted) metadata key."
    )  # fmt: skip
    score_threshold: float | None = Field(
        None, allow_inf_nan=False, description="Drop hits scoring below this (in the mode's score)."
    )
    weight: float | None = Field(
        None, ge=0.0, le=1.0, description="hybrid: a convex combination of min-max scores with this dense weight, "
        "instead of reciprocal-rank fusion."
    )  # fmt: skip

    def spec(self) -> int | SearchSpec:
        """What the batcher is asked: the bare k when nothing else is (the common case), else the whole spec."""
        fields = tuple(self.fields or ())
        options = (self.mode, self.filter, self.score_threshold, self.weight)
        if not fields and all(option is None for option in options):
            return self.k
        return SearchSpec(self.k, self.mode, self.filter, fields, self.score_threshold, self.weight)


class SearchRequest(SearchOptions):
    query: Query


class BatchSearchRequest(SearchOptions):
    queries: list[Query] = Field(min_length=1, description="Queries (at most SCALINGNOTE_MAX_BATCH_QUERIES).")


class ReloadRequest(Request):
    version: str | None = Field(None, description="Version id to serve (default: what ROOT/current points to).")


class QueryResult(BaseModel):
    results: list[Hit]
    truncated: bool = Field(description="The query was cut to the bundle's max tokens.")


class SearchResponse(QueryResult):
    took_ms: float
    index_version: str


class BatchSearchResponse(BaseModel):
    responses: list[QueryResult] = Field(description="One per query, in request order.")
    took_ms: float
    index_version: str


class IndexState(BaseModel):
    index_version: str
    docs: int
    versions: list[str] = Field(description="Versions on disk (index roots only), oldest first.")


class ReloadResponse(IndexState):
    previous_version: str | None
    changed: bool


class Status(BaseModel):
    status: str
    index_version: str | None = None


class ErrorBody(BaseModel):
    """Every error response: a machine-readable code, a human message and, for 422, per-field details."""

    error: str
    message: str
    details: list[dict] | None = None
