"""Request and response bodies.

Requests are strict: JSON types must match exactly (``"k": "10"`` or ``"k": true`` is a 422) and unknown
fields are rejected with 422 everywhere (``extra="forbid"``), so a misspelt option never goes unnoticed.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from scalingnote.index.store import Hit

MAX_K = 1000


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("query must contain a non-whitespace character")
    return text


Query = Annotated[str, Field(min_length=1, description="Free-text query."), AfterValidator(_not_blank)]
K = Annotated[int, Field(ge=1, le=MAX_K, description="Number of results.")]


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class SearchRequest(Request):
    query: Query
    k: K = 10


class BatchSearchRequest(Request):
    queries: list[Query] = Field(min_length=1, description="Queries (at most SCALINGNOTE_MAX_BATCH_QUERIES).")
    k: K = 10


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
