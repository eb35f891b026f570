"""The hot path of ``POST /search``, in plain ASGI: a valid JSON body is validated with the route's own
request model, queued on the same batcher and answered with orjson, without FastAPI's routing, dependency
solving and response-model validation. Every other request (a body that does not validate, a non-JSON
content type, a k over the hit cap, the service not ready) goes on to the FastAPI route, which answers it as
documented, so errors and the OpenAPI schema have one source. ``SCALINGNOTE_FAST_PATH=false`` turns it off.
"""

from __future__ import annotations

import time

import orjson
from fastapi import HTTPException
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from scalingnote.index.store import Hit
from scalingnote.service.asgi_body import read_at_most, replay
from scalingnote.service.batcher import Overloaded
from scalingnote.service.deps import ServiceState
from scalingnote.service.responses import error, overloaded
from scalingnote.service.routes.search import await_job, check_hit_cap, check_mode
from scalingnote.service.schemas import SearchRequest

JSON_HEADERS = [(b"content-type", b"application/json")]


def _is_json(scope: Scope) -> bool:
    """No Content-Type, or a JSON one (what FastAPI parses as JSON)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True


def _hit(hit: Hit) -> dict:
    """The route's serialisation of a hit (``response_model_exclude_none``: no title or fields key when it has
    none)."""
    out: dict = {"id": hit.id, "score": hit.score}
    if hit.title is not None:
        out["title"] = hit.title
    if hit.fields is not None:
        out["fields"] = hit.fields
    return out


class FastSearch:
    """ASGI handler of ``POST /search`` for the common case; hands anything else to ``fallback``."""

    def __init__(self, fallback: ASGIApp, state: ServiceState, max_body_bytes: int) -> None:
        self.fallback = fallback
        self.state = state
        self.limit = max_body_bytes
        self.stages = state.metrics.stages

    def _request(self, scope: Scope, body: bytes) -> SearchRequest | None:
        """The valid request in ``body``, or None when the route must answer it."""
        if not self.state.ready or not _is_json(scope) or self.state.engine is None:
            return None
        try:
            request = SearchRequest.model_validate_json(body)
            check_hit_cap(self.state.settings, 1, request.k)
            check_mode(self.state.engine, request)
        except (ValidationError, HTTPException):
            return None
        return request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        body = await read_at_most(receive, self.limit)  # the caller has refused larger bodies already
        request = None if body is None else self._request(scope, body)
        if request is None or (batcher := self.state.batcher) is None:
            await self.fallback(scope, receive if body is None else replay(body, receive), send)
            return
        parsed = time.perf_counter()
        self.stages["parse"].observe(parsed - started)
        try:
            job = batcher.enqueue([request.query], request.spec())
            out = await await_job(job, receive, self.state.settings.request_timeout_s)
        except Overloaded as exc:
            await overloaded(exc)(scope, receive, send)
            return
        except HTTPException as exc:
            await error(exc.status_code, str(exc.detail))(scope, receive, send)
            return
        answered = time.perf_counter()
        payload = orjson.dumps(
            {
                "results": [_hit(h) for h in out.hits[0]],
                "truncated": out.truncated[0],
                "took_ms": round((answered - parsed) * 1000, 3),
                "index_version": out.version,
            }
        )
        headers = [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        self.stages["serialize"].observe(time.perf_counter() - answered)
