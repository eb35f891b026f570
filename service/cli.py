"""``scalingnote serve``: the /search service under uvicorn (``SCALINGNOTE_WORKERS`` processes; heavy imports lazy)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

DRAIN_SECONDS = 30  # uvicorn's graceful-shutdown drain; deploy/k8s's grace period must exceed it + preStop


def serve_command(
    bundle: Annotated[Path | None, typer.Option(help="Model bundle directory (env SCALINGNOTE_BUNDLE).")] = None,
    index: Annotated[
        Path | None,
        typer.Option(help="Index root (versions/ + current) or a static index dir (env SCALINGNOTE_INDEX_ROOT)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (env SCALINGNOTE_HOST, default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env SCALINGNOTE_PORT, default 8000).")] = None,
) -> None:
    """Serve POST /search over the bundle's ONNX encoder and the index (see service/README.md for settings)."""
    import logging
    import os

    import uvicorn
    from pydantic import ValidationError

    from scalingnote.errors import UserError, validation_message
    from scalingnote.service.app import create_app
    from scalingnote.service.engine import Engine
    from scalingnote.service.settings import Settings

    overrides: dict[str, Any] = {"bundle": bundle, "index_root": index, "host": host, "port": port}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise UserError(f"invalid settings (SCALINGNOTE_* env, .env or options): {validation_message(exc)}") from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = Engine.from_settings(settings)  # fails fast (exit 2) on a mismatched or corrupt bundle/index
    run = {"host": settings.host, "port": settings.port, "access_log": settings.access_log}
    run |= {"log_level": settings.log_level, "timeout_graceful_shutdown": DRAIN_SECONDS}
    if settings.workers == 1:
        uvicorn.run(create_app(settings, engine), **run)
        return
    del engine  # checked; each worker process loads its own
    os.environ.update(
        {f"SCALINGNOTE_{name.upper()}": str(value) for name, value in overrides.items() if value is not None}
    )
    uvicorn.run(f"{create_app.__module__}:create_app", factory=True, workers=settings.workers, **run)
