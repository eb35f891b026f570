"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse

from scalingnote.service.deps import StateDep
from scalingnote.service.schemas import Status

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model_exclude_none=True)
async def healthz() -> Status:
    """Liveness: the process answers."""
    return Status(status="ok")


@router.get("/readyz", responses={503: {"model": Status, "description": "Loading, or stalled: no batch finishes."}})
async def readyz(state: StateDep) -> Response:
    """Readiness: loaded, self-checked and warmed up, and batches finish (503 `stalled` while none does)."""
    if not state.ready or state.engine is None:
        return JSONResponse(Status(status="loading").model_dump(exclude_none=True), status.HTTP_503_SERVICE_UNAVAILABLE)
    version = state.engine.current.version
    if state.batcher is not None and state.batcher.stalled:
        body = Status(status="stalled", index_version=version).model_dump()
        return JSONResponse(body, status.HTTP_503_SERVICE_UNAVAILABLE)
    return JSONResponse(Status(status="ready", index_version=version).model_dump())


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus text format."""
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
