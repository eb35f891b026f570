"""The app factory: ``create_app(settings)`` → FastAPI app (one uvicorn worker per process)."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import scalingnote
from scalingnote.service import lifecycle
from scalingnote.service.asgi_body import body_headers, read_at_most, replay
from scalingnote.service.batcher import Overloaded
from scalingnote.service.deps import ServiceState
from scalingnote.service.engine import Engine
from scalingnote.service.fast_search import FastSearch
from scalingnote.service.responses import error, overloaded
from scalingnote.service.routes import api_router
from scalingnote.service.settings import Settings

log = logging.getLogger("scalingnote.service")

SEARCHES = frozenset({"/search", "/search/batch"})
EMBEDDINGS = frozenset({"/embed", "/v1/embeddings"})
BATCHED = SEARCHES | EMBEDDINGS  # the routes that queue on the batcher
ROUTES = BATCHED | {"/info", "/healthz", "/readyz", "/metrics", "/admin/reload", "/admin/rollback", "/admin/index"}
PROTECTED = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class ServiceMiddleware:
    """Pure ASGI: 413 for bodies over the byte limit (declared or streamed), the API key on ``PROTECTED`` paths
    when ``api_key`` is given, 429 for searches and embeddings the batcher would refuse anyway (before the body
    is parsed: under overload the refusals must cost the event loop little), request metrics by route/status,
    and ``POST /search`` through :class:`FastSearch` when ``fast_path`` is on."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        state: ServiceState,
        api_key: str | None = None,
        fast_path: bool = True,
    ) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.state = state
        self.metrics = state.metrics
        self.api_key = api_key
        self.fast = FastSearch(app, state, max_body_bytes) if fast_path else None
        self._counters: dict[tuple[str, int], Counter] = {}
        self._latencies: dict[str, Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"
        code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            if self.api_key is not None and scope["path"] in PROTECTED and not _has_key(scope, self.api_key):
                await error(
                    status.HTTP_401_UNAUTHORIZED, "missing or wrong API key (X-API-Key or Authorization: Bearer)"
                )(scope, receive, send_wrapper)
            elif route in BATCHED and scope["method"] == "POST" and (refused := self._refusal()) is not None:
                await overloaded(refused)(scope, receive, send_wrapper)
            else:
                await self._limited(scope, receive, send_wrapper)
        finally:
            self._counter(route, code).inc()
            self._latency(route).observe(time.perf_counter() - started)

    def _counter(self, route: str, code: int) -> Counter:
        """The request counter of ``route`` and ``code`` (looked up once: ``labels()`` takes a lock)."""
        key = (route, code)
        if (counter := self._counters.get(key)) is None:
            counter = self._counters[key] = self.metrics.requests.labels(route=route, status=str(code))
        return counter

    def _latency(self, route: str) -> Histogram:
        if (histogram := self._latencies.get(route)) is None:
            histogram = self._latencies[route] = self.metrics.latency.labels(route=route)
        return histogram

    def _refusal(self) -> Overloaded | None:
        """What the batcher would answer one more query now (None while not ready: the route says 503)."""
        batcher = self.state.batcher
        return batcher.refusal(1) if batcher is not None and self.state.ready else None

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        length, chunked = body_headers(scope)
        fast = scope["path"] == "/search" and scope["method"] == "POST"
        app: ASGIApp = self.fast if fast and self.fast is not None else self.app
        if length is not None and length > self.limit:
            await self._too_large(scope, receive, send)
        elif chunked:  # no declared length: read up to the limit, then hand the body on
            body = await read_at_most(receive, self.limit)
            if body is None:
                await self._too_large(scope, receive, send)
            else:
                await app(scope, replay(body, receive), send)
        else:
            await app(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error(status.HTTP_413_CONTENT_TOO_LARGE, f"request body larger than {self.limit} bytes")
        response.headers["Connection"] = "close"  # the unread body must not be parsed as a next request
        await response(scope, receive, send)


def _has_key(scope: Scope, key: str) -> bool:
    """Whether the request carries ``key`` as ``X-API-Key`` or ``Authorization: Bearer`` (Prometheus)."""
    headers = dict(scope["headers"])
    given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
    return hmac.compare_digest(given, key.encode())


def _describe(err: dict) -> str:
    if err["type"] == "json_invalid":
        return f"body is not valid JSON ({err['msg']} at character {err['loc'][-1]})"
    field = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
    return f"{field}: {err['msg']}"


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable message; the rejected input is never echoed back."""
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    message = "; ".join(_describe(e) for e in details[:5])
    return error(status.HTTP_422_UNPROCESSABLE_CONTENT, message, details)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == status.HTTP_400_BAD_REQUEST:  # FastAPI's "error parsing the body": not UTF-8, too deep
        message = f"invalid request body: {exc.detail} (not UTF-8 JSON, nested too deep, or a number too long)"
        return error(status.HTTP_422_UNPROCESSABLE_CONTENT, message)
    return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
    return overloaded(exc)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse({"error": "internal", "message": "internal server error"}, 500)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The service app; loads bundle and index at startup unless a loaded ``engine`` is given."""
    state = ServiceState(settings or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await lifecycle.start(state, engine)
        try:
            async with lifecycle.poller(state):
                yield
        finally:
            await lifecycle.stop(state)

    app = FastAPI(
        title="scalingnote search",
        version=scalingnote.__version__,
        description="Dense retrieval: ONNX query encoder + FAISS. Requests are strict JSON; unknown fields → 422.",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},  # Prometheus instead (/metrics)
    )
    app.state.service = state
    app.include_router(api_router)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Overloaded, _overloaded)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    settings = state.settings
    key = settings.api_key.get_secret_value() if settings.protect_metrics_docs and settings.api_key else None
    app.add_middleware(
        ServiceMiddleware,
        max_body_bytes=settings.max_body_bytes,
        state=state,
        api_key=key,
        fast_path=settings.fast_path,
    )
    return app
