"""``POST /admin/reload`` and ``POST /admin/rollback`` (header ``X-API-Key``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from scalingnote.service.deps import EngineDep, StateDep, require_api_key
from scalingnote.service.lifecycle import reload_index, rollback_index
from scalingnote.service.schemas import ErrorBody, IndexState, ReloadRequest, ReloadResponse

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_api_key)])

ERRORS: dict[int | str, dict] = {
    401: {"model": ErrorBody, "description": "Missing or wrong X-API-Key."},
    403: {"model": ErrorBody, "description": "Admin API disabled (no SCALINGNOTE_API_KEY)."},
    409: {"model": ErrorBody, "description": "Rejected (corrupt, mismatched, unknown version): old index serves on."},
}


@router.get("/index", responses=ERRORS)
async def index_state(engine: EngineDep) -> IndexState:
    """The served version, its doc count and the versions on disk."""
    gen = engine.current
    on_disk = engine.available_versions()
    return IndexState(index_version=gen.version, docs=gen.docs, versions=on_disk)


@router.post("/reload", responses=ERRORS)
async def reload(state: StateDep, body: Annotated[ReloadRequest | None, Body()] = None) -> ReloadResponse:
    """Serve `version` (and repoint ROOT/current to it), or what ROOT/current points to now."""
    return await reload_index(state, body.version if body else None)


@router.post("/rollback", responses=ERRORS)
async def rollback(state: StateDep) -> ReloadResponse:
    """Repoint ROOT/current at the version before it and serve that."""
    return await rollback_index(state)
