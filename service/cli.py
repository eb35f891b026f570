"""``scalingnote serve``: the /search service under uvicorn (``SCALINGNOTE_WORKERS`` processes).

Its options are made from :class:`Settings`, one per field with its ``SCALINGNOTE_*`` variable, so ``serve
--help`` lists every setting. This module imports the settings (pydantic-settings, FAISS): the CLI root loads
it only for ``serve``. Uvicorn, ONNX Runtime and the app are imported when the command runs.
"""

from __future__ import annotations

import inspect
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import typer
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from scalingnote.service.settings import Settings

DRAIN_SECONDS = 30  # uvicorn's graceful-shutdown drain; deploy/k8s's grace period must exceed it + preStop
ENV_PREFIX: str = Settings.model_config["env_prefix"]
FLAGS = {"index_root": "--index"}  # options not named after their field

app = typer.Typer(add_completion=False)


def envvar(name: str) -> str:
    """The environment variable of the setting ``name``."""
    return ENV_PREFIX + name.upper()


def _value_type(annotation: Any) -> Any:
    """What the option parses for a field: ``X | None`` → ``X``, a secret as a plain string."""
    if get_origin(annotation) in (Union, UnionType):
        (annotation,) = (arg for arg in get_args(annotation) if arg is not NoneType)
    return str if annotation is SecretStr else annotation


def _option(name: str, field: FieldInfo) -> inspect.Parameter:
    """The option of one setting; unset unless given (or in its variable), so that ``.env`` still applies."""
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    if field.annotation is bool:
        flag = f"{flag}/--no-{flag.removeprefix('--')}"
    default = "unset" if field.default is None else str(field.default)
    default = default.lower() if field.annotation is bool else default
    info = typer.Option(flag, envvar=envvar(name), help=f"{field.description} (default: {default})")
    annotation = Annotated[_value_type(field.annotation) | None, info]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


@app.command("serve")
def serve_command(**options: Any) -> None:
    """Serve POST /search over the bundle's ONNX encoder and the index (options override env and .env)."""
    import logging
    import os

    import uvicorn
    from pydantic import ValidationError

    from scalingnote.errors import UserError, validation_message
    from scalingnote.service.app import create_app
    from scalingnote.service.engine import Engine

    given = {name: value for name, value in options.items() if value is not None}
    try:
        settings = Settings(**given)
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
    os.environ.update({envvar(name): str(value) for name, value in given.items()})
    factory = f"{create_app.__module__}:create_app"
    if not settings.reuse_port:
        uvicorn.run(factory, factory=True, workers=settings.workers, **run)
        return
    from scalingnote.service.workers import ReusePortWorkers

    try:
        config = uvicorn.Config(factory, factory=True, workers=settings.workers, **run)
        supervisor = ReusePortWorkers(config, pin=settings.pin_workers and hasattr(os, "sched_setaffinity"))
    except OSError as exc:
        raise UserError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    slots = supervisor.slots or []
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on http://%s:%d, %d workers, a SO_REUSEPORT socket each%s",
        settings.host,
        supervisor.config.port,
        settings.workers,
        "".join(f", worker {i} on CPUs {','.join(map(str, sorted(slot)))}" for i, slot in enumerate(slots)),
    )
    supervisor.run()


serve_command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [_option(name, field) for name, field in Settings.model_fields.items()]
)
