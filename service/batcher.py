"""Dynamic micro-batching: concurrent requests share one ONNX call and one FAISS search.

Requests queue on the event loop; one worker task takes up to ``max_batch_size`` queries, waits at most
``max_wait_us`` for more to arrive, and runs encode + search on a dedicated inference thread, so the
event loop never blocks. While a batch runs, the next one forms. Above ``max_queue`` queued queries a
request is refused at once (:class:`Overloaded`, answered 429 + Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from scalingnote.service.engine import BatchOutput, Engine
from scalingnote.service.metrics import Metrics

log = logging.getLogger("scalingnote.service")


class Overloaded(Exception):
    """The queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server busy: more than the maximum number of queued queries; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class _Job:
    texts: list[str]
    k: int
    future: asyncio.Future[BatchOutput]


class Batcher:
    """Queue + worker task; :meth:`submit` returns the job's slice of its batch's output."""

    def __init__(self, engine: Engine, metrics: Metrics, max_batch_size: int, max_wait_us: int, max_queue: int):
        self.engine = engine
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_us / 1e6
        self.max_queue = max_queue
        self._pending: deque[_Job] = deque()
        self._depth = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="scalingnote-infer")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scalingnote-batcher")

    async def stop(self) -> None:
        """Cancel the worker, fail what is still queued, and join the inference thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("server shutting down"))
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return self._depth

    async def submit(self, texts: list[str], k: int) -> BatchOutput:
        """Queue ``texts`` and wait for their results (raises :class:`Overloaded` when the queue is full)."""
        if self._depth + len(texts) > self.max_queue:
            self.metrics.rejected.inc()
            raise Overloaded(retry_after=1)
        job = _Job(texts, k, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._depth += len(texts)
        self.metrics.queue_depth.set(self._depth)
        self._wakeup.set()
        return await job.future

    def _take(self, room: int, batch: list[_Job]) -> int:
        """Move queued jobs into ``batch`` while they fit in ``room`` queries (a first job always fits)."""
        taken = 0
        while self._pending and (not batch or len(self._pending[0].texts) <= room - taken):
            job = self._pending.popleft()
            self._depth -= len(job.texts)
            if job.future.done():  # cancelled: its request timed out or went away
                continue
            batch.append(job)
            taken += len(job.texts)
        self.metrics.queue_depth.set(self._depth)
        return taken

    async def _gather(self) -> list[_Job]:
        """The next batch: what is queued now, topped up for at most ``max_wait`` while it is not full."""
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch: list[_Job] = []
        size = self._take(self.max_batch_size, batch)
        if self.max_wait > 0 and size < self.max_batch_size:
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch_size and (remaining := deadline - time.monotonic()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
                size += self._take(self.max_batch_size - size, batch)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            texts = [t for job in batch for t in job.texts]
            k = max(job.k for job in batch)
            started = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self.engine.run_batch, texts, k)
            except Exception as exc:
                log.exception("batch of %d queries failed", len(texts))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.metrics.inference.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(texts))
            start = 0
            for job in batch:
                end = start + len(job.texts)
                if not job.future.done():
                    hits = [h[: job.k] for h in out.hits[start:end]]
                    job.future.set_result(BatchOutput(hits, out.truncated[start:end], out.version))
                start = end
