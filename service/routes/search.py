"""``POST /search`` and ``POST /search/batch``."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, HTTPException, status

from scalingnote.service import engine
from scalingnote.service.deps import BatcherDep, SettingsDep
from scalingnote.service.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    ErrorBody,
    QueryResult,
    SearchRequest,
    SearchResponse,
)

router = APIRouter(tags=["search"])

ERRORS: dict[int | str, dict] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (413, "Body larger than SCALINGNOTE_MAX_BODY_BYTES."),
        (422, "Invalid body: empty/blank query, k out of range, wrong type, unknown field, non-JSON."),
        (429, "Queue full: retry after the Retry-After header's seconds."),
        (503, "Not ready yet, or the request waited longer than SCALINGNOTE_REQUEST_TIMEOUT_S."),
    )
}


async def _run(batcher: BatcherDep, settings: SettingsDep, texts: list[str], k: int) -> engine.BatchOutput:
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            return await batcher.submit(texts, k)
    except TimeoutError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "request timed out waiting for a batch") from None


@router.post("/search", response_model_exclude_none=True, responses=ERRORS)
async def search(body: SearchRequest, batcher: BatcherDep, settings: SettingsDep) -> SearchResponse:
    """Top-k documents for one query. A query longer than the bundle's max tokens is cut (`truncated`)."""
    started = time.perf_counter()
    out = await _run(batcher, settings, [body.query], body.k)
    return SearchResponse(
        results=out.hits[0],
        truncated=out.truncated[0],
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        index_version=out.version,
    )


@router.post("/search/batch", response_model_exclude_none=True, responses=ERRORS)
async def search_batch(body: BatchSearchRequest, batcher: BatcherDep, settings: SettingsDep) -> BatchSearchResponse:
    """Top-k documents for each of up to SCALINGNOTE_MAX_BATCH_QUERIES queries (one batch)."""
    if len(body.queries) > settings.max_batch_queries:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"queries: at most {settings.max_batch_queries} queries per request, got {len(body.queries)}",
        )
    started = time.perf_counter()
    out = await _run(batcher, settings, body.queries, body.k)
    return BatchSearchResponse(
        responses=[QueryResult(results=h, truncated=t) for h, t in zip(out.hits, out.truncated, strict=True)],
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        index_version=out.version,
    )
