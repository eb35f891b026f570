"""Startup, index reloads (admin and polling) and rollback; loading always runs off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable

from fastapi import HTTPException, status

from scalingnote.errors import UserError
from scalingnote.index.faiss_backend import set_blas_queries
from scalingnote.service.batcher import Batcher
from scalingnote.service.deps import ServiceState
from scalingnote.service.engine import Engine, Generation
from scalingnote.service.schemas import ReloadResponse

log = logging.getLogger("scalingnote.service")


async def start(state: ServiceState, engine: Engine | None) -> None:
    """Load (unless given), warm up every batch size on the inference thread, start the batcher; then ready."""
    settings = state.settings
    sys.setswitchinterval(settings.gil_switch_ms / 1000)
    # a batch's tokenizing on rayon's pool hands off to threads that contend with the other workers (unless set)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if engine is None:
        engine = await asyncio.to_thread(Engine.from_settings, settings)
    state.engine = engine
    set_blas_queries(settings.faiss_blas_queries, engine.encoder.dim)
    state.metrics.set_build(engine.encoder.manifest.name, engine.encoder.variant)
    state.metrics.set_index(engine.current.version, engine.current.docs)
    batcher = Batcher.from_settings(engine, state.metrics, settings)
    await _warm_up(batcher, engine, settings.max_batch_size)
    batcher.start()
    state.batcher = batcher
    state.ready = True
    log.info(
        "ready: bundle %s (%s, %s), index %s (%d docs)",
        engine.encoder.manifest.name,
        engine.encoder.variant,
        engine.encoder.provider,
        engine.current.version,
        engine.current.docs,
    )


async def _warm_up(batcher: Batcher, engine: Engine, max_batch_size: int) -> None:
    """First runs of each shape allocate: do them, on the thread that will serve, before the first request."""
    long_query = " ".join(["warm-up"] * engine.encoder.manifest.encoder.max_length)
    size = 1
    while True:
        batch = ["warm-up query"] * min(size, max_batch_size)
        await batcher.call(engine.run_batch, [*batch[:-1], long_query], 10)
        await batcher.call(engine.run_batch, batch, 10)
        if size >= max_batch_size:
            break
        size *= 2


async def stop(state: ServiceState) -> None:
    state.ready = False
    if state.batcher is not None:
        await state.batcher.stop()


def _response(state: ServiceState, swapped: tuple[Generation, Generation] | None) -> ReloadResponse:
    assert state.engine is not None
    engine = state.engine
    gen = engine.current
    on_disk = engine.available_versions()
    if swapped is None:
        return ReloadResponse(
            index_version=gen.version, docs=gen.docs, versions=on_disk, previous_version=None, changed=False
        )
    old, new = swapped
    state.metrics.set_index(new.version, new.docs)
    return ReloadResponse(
        index_version=new.version, docs=new.docs, versions=on_disk, previous_version=old.version, changed=True
    )


async def _swap(
    state: ServiceState, action: Callable[[Engine], tuple[Generation, Generation] | None]
) -> ReloadResponse:
    """Run a load-and-swap ``action`` in a thread, one at a time; a rejected target leaves the old index.

    A second call while one runs, or one that cannot take ``ROOT/.lock`` within ``lock_timeout_s``, gets
    409 at once rather than waiting.
    """
    if state.engine is None or not state.ready:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not ready: the bundle and index are loading")
    engine = state.engine
    serving = engine.current.version
    if state.reload_lock.locked():
        raise HTTPException(status.HTTP_409_CONFLICT, f"another reload or rollback is running; serving {serving}")
    async with state.reload_lock:
        try:
            swapped = await asyncio.to_thread(action, engine)
        except (UserError, OSError) as exc:
            state.metrics.reloads.labels(result="rejected").inc()
            log.error("index reload rejected, still serving %s: %s", serving, exc)
            raise HTTPException(status.HTTP_409_CONFLICT, f"rejected, still serving {serving}: {exc}") from None
        state.metrics.reloads.labels(result="ok").inc()
        return _response(state, swapped)


async def reload_index(state: ServiceState, version: str | None) -> ReloadResponse:
    return await _swap(state, lambda engine: engine.reload(version))


async def rollback_index(state: ServiceState) -> ReloadResponse:
    return await _swap(state, lambda engine: engine.rollback())


async def poll(state: ServiceState) -> None:
    """Follow ``ROOT/current`` (or the Milvus alias) until cancelled; any failure is logged and polling goes on."""
    while True:
        await asyncio.sleep(state.settings.reload_poll_seconds)
        try:
            await _poll_once(state)
        except HTTPException:
            pass  # a rejected target: logged by _swap, not retried
        except Exception:
            log.exception("index poller: checking ROOT/current failed; polling on")


async def _poll_once(state: ServiceState) -> None:
    """Swap when ``current`` points somewhere new (a target that failed once is not retried)."""
    engine = state.engine
    if engine is None or not state.ready or state.reload_lock.locked():
        return
    target = await asyncio.to_thread(engine.watch_target)  # a Milvus alias is a network call
    if target is None or target == engine.current.name or target == state.rejected_target:
        return
    try:
        await reload_index(state, None)
    except Exception:
        state.rejected_target = target
        raise


@contextlib.asynccontextmanager
async def poller(state: ServiceState):
    """Run :func:`poll` for the app's lifetime when following an index root or alias with polling on."""
    engine = state.engine
    if engine is None or not engine.follows or state.settings.reload_poll_seconds <= 0:
        yield
        return
    task = asyncio.create_task(poll(state), name="scalingnote-index-poller")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
