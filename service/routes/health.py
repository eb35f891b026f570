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


@router.get("/readyz", responses={503: {"model": Status, "description": "Still loading or self-checking."}})
async def readyz(state: StateDep) -> Response:
    """Readiness: bundle and index loaded, self-check query passed, warm-up done."""
    if state.ready and state.engine is not None:
        return JSONResponse(Status(status="ready", index_version=state.engine.current.version).model_dump())
    return JSONResponse(Status(status="loading").model_dump(exclude_none=True), status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus text format."""
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
