"""``POST /search`` and ``POST /search/batch``."""

from __future__ import annotations

import asyncio
import time
from asyncio import FIRST_COMPLETED

from fastapi import APIRouter, HTTPException, Request, status

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
CLIENT_CLOSED = 499  # nginx's "client closed request": only ever logged, the client is gone

ERRORS: dict[int | str, dict] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (413, "Body larger than SCALINGNOTE_MAX_BODY_BYTES."),
        (422, "Invalid body: empty/blank query, k out of range, queries x k over the cap, wrong type, unknown field."),
        (429, "Queue full or its expected wait over budget: retry after the Retry-After header's seconds."),
        (503, "Not ready yet, or the request waited longer than SCALINGNOTE_REQUEST_TIMEOUT_S."),
    )
}


async def _client_gone(request: Request) -> None:
    """Return once the client disconnects (the body is read: the next ASGI message is ``http.disconnect``)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _run(
    request: Request, batcher: BatcherDep, settings: SettingsDep, texts: list[str], k: int
) -> engine.BatchOutput:
    """The job's output; a job that times out or whose client goes away is cancelled, so never computed."""
    if len(texts) * k > settings.max_hits_per_request:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{len(texts)} queries x k={k} asks for more than SCALINGNOTE_MAX_HITS_PER_REQUEST "
            f"({settings.max_hits_per_request}) hits",
        )
    job = batcher.enqueue(texts, k)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait((job, gone), timeout=settings.request_timeout_s, return_when=FIRST_COMPLETED)
    finally:
        job.cancel()  # no-op once it has its result
        gone.cancel()
    if job in done:
        return job.result()
    if gone in done:
        raise HTTPException(CLIENT_CLOSED, "client disconnected before its results were computed")
    raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "request timed out waiting for a batch")


@router.post("/search", response_model_exclude_none=True, responses=ERRORS)
async def search(body: SearchRequest, request: Request, batcher: BatcherDep, settings: SettingsDep) -> SearchResponse:
    """Top-k documents for one query. A query longer than the bundle's max tokens is cut (`truncated`)."""
    started = time.perf_counter()
    out = await _run(request, batcher, settings, [body.query], body.k)
    return SearchResponse(
        results=out.hits[0],
        truncated=out.truncated[0],
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        index_version=out.version,
    )


@router.post("/search/batch", response_model_exclude_none=True, responses=ERRORS)
async def search_batch(
    body: BatchSearchRequest, request: Request, batcher: BatcherDep, settings: SettingsDep
) -> BatchSearchResponse:
    """Top-k documents for each of up to SCALINGNOTE_MAX_BATCH_QUERIES queries (one batch)."""
    if len(body.queries) > settings.max_batch_queries:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"queries: at most {settings.max_batch_queries} queries per request, got {len(body.queries)}",
        )
    started = time.perf_counter()
    out = await _run(request, batcher, settings, body.queries, body.k)
    return BatchSearchResponse(
        responses=[QueryResult(results=h, truncated=t) for h, t in zip(out.hits, out.truncated, strict=True)],
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        index_version=out.version,
    )
