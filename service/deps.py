"""Shared state of a running app and the FastAPI dependencies that hand it to routes.

The dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread,
a thread hop per dependency per request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from scalingnote.service.batcher import Batcher
from scalingnote.service.engine import Engine
from scalingnote.service.metrics import Metrics
from scalingnote.service.settings import Settings

log = logging.getLogger("scalingnote.service")


@dataclass
class ServiceState:
    """What the lifespan sets up: settings, metrics, engine and batcher, readiness."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    batcher: Batcher | None = None
    ready: bool = False
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    rejected_target: str | None = None


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


async def get_engine(state: StateDep) -> Engine:
    if state.engine is None or not state.ready:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not ready: the bundle and index are loading")
    return state.engine


async def get_batcher(state: StateDep, _: Annotated[Engine, Depends(get_engine)]) -> Batcher:
    assert state.batcher is not None  # set together with the engine
    return state.batcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="SCALINGNOTE_API_KEY")


async def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """Admin routes: 403 while no key is configured, 401 for a missing or wrong key."""
    if settings.api_key is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admin API disabled: set SCALINGNOTE_API_KEY to enable it")
    if key is None or not hmac.compare_digest(key.encode(), settings.api_key.get_secret_value().encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong X-API-Key")
