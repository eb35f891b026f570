"""``POST /search`` and ``POST /search/batch``."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, HTTPException, Request, status
from starlette.types import Receive

from scalingnote.errors import UserError
from scalingnote.service import engine
from scalingnote.service.deps import BatcherDep, SettingsDep
from scalingnote.service.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    ErrorBody,
    QueryResult,
    SearchOptions,
    SearchRequest,
    SearchResponse,
)
from scalingnote.service.settings import Settings

router = APIRouter(tags=["search"])
CLIENT_CLOSED = 499  # nginx's "client closed request": only ever logged, the client is gone
WATCH_AFTER_S = 0.005  # a job still waiting after this starts watching for its client's disconnect


def error_responses(invalid: str) -> dict[int | str, dict]:
    """The OpenAPI error responses of a batched route (413, 422 with ``invalid`` as its causes, 429, 503)."""
    texts = {
        413: "Body larger than SCALINGNOTE_MAX_BODY_BYTES.",
        422: invalid,
        429: "Queue full or its expected wait over budget: retry after the Retry-After header's seconds.",
        503: "Not ready yet, or the request waited longer than SCALINGNOTE_REQUEST_TIMEOUT_S.",
    }
    return {code: {"model": ErrorBody, "description": text} for code, text in texts.items()}


ERRORS = error_responses(
    "Invalid body: empty/blank query, k out of range, queries x k over the cap, wrong type, unknown field, "
    "a mode the index does not hold."
)


def check_hit_cap(settings: Settings, queries: int, k: int) -> None:
    """422 when ``queries`` x ``k`` is over ``max_hits_per_request``."""
    if queries * k > settings.max_hits_per_request:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{queries} queries x k={k} asks for more than SCALINGNOTE_MAX_HITS_PER_REQUEST "
            f"({settings.max_hits_per_request}) hits",
        )


def check_mode(eng: engine.Engine, options: SearchOptions) -> None:
    """422 when ``options`` asks for a retrieval mode the serving index does not hold."""
    index = eng.current.index
    if options.mode is not None and index is not None and options.mode not in index.modes:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"mode: the served index holds {', '.join(index.modes)}, not {options.mode} "
            "(BM25 modes need an index built with --bm25)",
        )


async def await_job(job: asyncio.Future[engine.BatchOutput], receive: Receive, timeout: float) -> engine.BatchOutput:
    """The job's output; a job that times out or whose client goes away is cancelled, so never computed. A
    request the index cannot answer as asked (:class:`UserError`, e.g. fields of an index without a document
    store) is a 422.

    A job answered within ``WATCH_AFTER_S`` (nearly all of them) costs two timer handles: only a job still
    waiting then gets a task that watches for the client's disconnect (the body is read, so the next ASGI
    message is ``http.disconnect``)."""
    loop = asyncio.get_running_loop()
    reason: list[HTTPException] = []
    watcher: asyncio.Task[None] | None = None

    def give_up(exc: HTTPException) -> None:
        if not job.done():
            reason.append(exc)
            job.cancel()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        give_up(HTTPException(CLIENT_CLOSED, "client disconnected before its results were computed"))

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timers = (
        loop.call_later(min(WATCH_AFTER_S, timeout), start_watching),
        loop.call_later(
            timeout,
            give_up,
            HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "request timed out waiting for a batch"),
        ),
    )
    try:
        return await job
    except UserError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except asyncio.CancelledError:
        if reason:
            raise reason[0] from None
        raise
    finally:
        for timer in timers:
            timer.cancel()
        if watcher is not None:
            watcher.cancel()
        job.cancel()  # no-op once it has its result


async def _run(
    request: Request, batcher: BatcherDep, settings: SettingsDep, texts: list[str], options: SearchOptions
) -> engine.BatchOutput:
    check_hit_cap(settings, len(texts), options.k)
    check_mode(batcher.engine, options)
    return await await_job(batcher.enqueue(texts, options.spec()), request.receive, settings.request_timeout_s)


@router.post("/search", response_model_exclude_none=True, responses=ERRORS)
async def search(body: SearchRequest, request: Request, batcher: BatcherDep, settings: SettingsDep) -> SearchResponse:
    """Top-k documents for one query, by the index's default mode or `mode`, among the documents `filter` allows.
    A query longer than the bundle's max tokens is cut (`truncated`)."""
    started = time.perf_counter()
    out = await _run(request, batcher, settings, [body.query], body)
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
    out = await _run(request, batcher, settings, body.queries, body)
    return BatchSearchResponse(
        responses=[QueryResult(results=h, truncated=t) for h, t in zip(out.hits, out.truncated, strict=True)],
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        index_version=out.version,
    )
