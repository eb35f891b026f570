"""Dynamic micro-batching: concurrent requests share one ONNX call and one FAISS search.

Requests queue on the event loop; one worker task takes up to ``max_batch_size`` queries, waits at
most ``max_wait_us`` for more to arrive, and runs encode + search on a dedicated inference thread, so the
event loop never blocks. While a batch runs, the next one forms. A request is refused at once
(:class:`Overloaded`, answered 429 + Retry-After) above ``max_queue`` queued queries, or when the queued
queries (more than one batch) times the measured per-query time (EWMA) exceed ``queue_budget_s`` and have for
``overload_interval_s`` (:class:`SustainedOverload`: a short stall is waited out, sustained overload refused).

Supervision: a worker task that dies is restarted (logged); :attr:`Batcher.stalled` says that work is
waiting and no batch has finished for ``stall_after_s`` (a wedged inference call), for ``/readyz``.
A batch that fails is rerun request by request, so one bad query fails only its own request. Jobs whose
future is done (cancelled: timed out, client gone) are dropped before they are computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import faiss

from scalingnote.service.engine import BatchOutput, Engine, Spec
from scalingnote.service.metrics import Metrics
from scalingnote.service.settings import Settings

log = logging.getLogger("scalingnote.service")

EWMA_ALPHA = 0.2
RESTART_DELAY_S = 0.05
T = TypeVar("T")


class Overloaded(Exception):
    """The queue is full or its expected wait is over budget; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, reason: str = "more than the maximum number of queued queries") -> None:
        super().__init__(f"server busy: {reason}; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class SustainedOverload:
    """Budget refusals start once the expected wait has been over budget for ``interval`` s, and stop once it
    has been under budget for as long (CoDel's idea at admission): a stall of a swap, a GC pause or a burst is
    absorbed, while under sustained overload the state stays on and every over-budget request is refused."""

    interval: float
    shedding: bool = False
    _since: float | None = None  # start of the current run of observations that contradict ``shedding``

    def update(self, over: bool, now: float, idle: bool = False) -> bool:
        """Fold in one observation (``over``: the expected wait is over budget; ``idle``: the server went
        idle, nothing queued or running); returns whether to shed. Going idle stops shedding at once: what
        came was a burst, not a standing queue. Without it, bursts that come more often than ``interval``
        would never show ``interval`` of under-budget arrivals, and shedding would outlast the overload that
        started it. Under overload the server never goes idle (an empty queue alone is no sign: each batch
        takes the whole queue)."""
        if idle:
            self.shedding, self._since = False, None
        elif over == self.shedding:
            self._since = None
        elif self._since is None and self.interval > 0:
            self._since = now
        elif self._since is None or now - self._since >= self.interval:
            self.shedding, self._since = over, None
        return self.shedding


@dataclass(eq=False)
class _Job:
    texts: list[str]
    spec: int | Spec  # a k, a SearchSpec, or None: embeddings only
    future: asyncio.Future[BatchOutput]
    enqueued: float  # time.perf_counter()


def _init_inference_thread(faiss_threads: int) -> None:
    """OpenMP settings are per thread: FAISS's thread count is set on the thread that searches."""
    faiss.omp_set_num_threads(faiss_threads)


class Batcher:
    """Queue + supervised worker task; :meth:`submit` returns the job's slice of its batch's output."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        max_batch_size: int,
        max_wait_us: int,
        max_queue: int,
        queue_budget_s: float | None = None,
        stall_after_s: float = 5.0,
        faiss_threads: int = 1,
        overload_interval_s: float = 0.0,
    ):
        self.engine = engine
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_us / 1e6
        self.max_queue = max_queue
        self.queue_budget = queue_budget_s
        self._overload = SustainedOverload(overload_interval_s)
        self.stall_after = stall_after_s
        self._pending: deque[_Job] = deque()
        self._depth = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix="scalingnote-infer", initializer=_init_inference_thread, initargs=(faiss_threads,)
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._batch: list[_Job] = []
        self._running = False
        self._progress_at = time.monotonic()
        self._per_query: float | None = None

    @classmethod
    def from_settings(cls, engine: Engine, metrics: Metrics, settings: Settings) -> Batcher:
        return cls(
            engine,
            metrics,
            settings.max_batch_size,
            settings.max_wait_us,
            settings.max_queue,
            settings.queue_budget_ms / 1000,
            settings.stall_timeout_s,
            settings.faiss_threads,
            settings.overload_interval_ms / 1000,
        )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scalingnote-batcher")
        self._task.add_done_callback(self._on_worker_exit)

    def _on_worker_exit(self, task: asyncio.Task[None]) -> None:
        """Restart a worker that died (not one that was stopped); fail the batch it was running."""
        if self._stopping or task.cancelled():
            return
        log.error("batcher task died, restarting it", exc_info=task.exception())
        for job in self._batch:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the batcher crashed while running this request"))
        self._batch, self._running = [], False
        asyncio.get_running_loop().call_later(RESTART_DELAY_S, self._restart)

    def _restart(self) -> None:
        if not self._stopping:
            self.start()

    async def stop(self) -> None:
        """Cancel the worker, fail what is still queued, and join the inference thread."""
        self._stopping = True
        if self._task is not None and not self._task.done():  # a dead one is already logged
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

    @property
    def stalled(self) -> bool:
        """Work is queued or running and no batch has finished for ``stall_after_s``."""
        busy = self._depth > 0 or self._running
        return busy and time.monotonic() - self._progress_at > self.stall_after

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the inference thread (warm-up, checks)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def enqueue(self, texts: list[str], spec: int | Spec) -> asyncio.Future[BatchOutput]:
        """Queue ``texts``, each searched as ``spec`` asks (a k, a :class:`SearchSpec`, or None for embeddings
        only); the future gets their results (cancel it to drop the job). Raises :class:`Overloaded`."""
        self._admit(len(texts))
        if self._depth == 0 and not self._running:
            self._progress_at = time.monotonic()  # an idle worker's stall clock starts with this job
        job = _Job(texts, spec, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._pending.append(job)
        self._depth += len(texts)
        self.metrics.queue_depth.set(self._depth)
        self._wakeup.set()
        return job.future

    async def submit(self, texts: list[str], spec: int | Spec) -> BatchOutput:
        """Queue ``texts`` and wait for their results (raises :class:`Overloaded` when refused)."""
        return await self.enqueue(texts, spec)

    def refusal(self, queries: int) -> Overloaded | None:
        """Why ``queries`` more would be refused (counted as rejected), or None: over ``max_queue`` queued
        queries, or an expected wait over the budget (sustained: :class:`SustainedOverload`)."""
        wait = self._depth * (self._per_query or 0.0)
        # a queue of at most one batch is no overload: the next batch takes it all
        over = self.queue_budget is not None and self._depth > self.max_batch_size and wait > self.queue_budget
        idle = self._depth == 0 and not self._running  # nothing queued and no batch running: the server went idle
        shedding = self._overload.update(over, time.monotonic(), idle=idle)
        if self._depth + queries > self.max_queue:
            refused = Overloaded(retry_after=1)
        elif over and shedding:
            reason = f"expected queue wait {wait * 1000:.0f} ms is over the {self.queue_budget * 1000:.0f} ms budget"
            refused = Overloaded(max(1, math.ceil(wait)), reason)
        else:
            return None
        self.metrics.rejected.inc()
        return refused

    def _admit(self, queries: int) -> None:
        if (refused := self.refusal(queries)) is not None:
            raise refused

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
        while True:
            self._batch = [job for job in await self._gather() if not job.future.done()]
            queue, now = self.metrics.stages["queue"], time.perf_counter()
            for job in self._batch:
                queue.observe(now - job.enqueued)
            if self._batch:
                await self._execute(self._batch)
            self._batch = []

    async def _execute(self, batch: list[_Job]) -> None:
        """Run ``batch`` in one call; if that fails, rerun each request alone so a bad query fails only its own."""
        texts = [t for job in batch for t in job.texts]
        try:
            out = await self._infer(texts, [job.spec for job in batch for _ in job.texts])
        except Exception as exc:
            if len(batch) > 1:
                log.warning("batch of %d requests failed (%s); retrying them one by one", len(batch), exc)
                for job in batch:
                    if not job.future.done():
                        await self._execute([job])
                return
            log.exception("request of %d queries failed", len(texts))
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        start = 0
        for job in batch:
            end = start + len(job.texts)
            if not job.future.done():
                vectors = None if out.vectors is None else out.vectors[start:end]
                part = BatchOutput(
                    out.hits[start:end], out.truncated[start:end], out.version, {}, vectors, out.tokens[start:end]
                )
                job.future.set_result(part)
            start = end

    async def _infer(self, texts: list[str], specs: Sequence[int | Spec]) -> BatchOutput:
        """One encode + search on the inference thread; records the heartbeat and the per-query time."""
        started = time.perf_counter()
        self._running = True
        try:
            out = await self.call(self.engine.run_batch, texts, specs)
        finally:
            self._running = False
            self._progress_at = time.monotonic()
        self._observe(time.perf_counter() - started, len(texts))
        for name, seconds in out.stages.items():
            self.metrics.stages[name].observe(seconds)
        return out

    def _observe(self, seconds: float, queries: int) -> None:
        """Fold a finished batch into the per-query time estimate (EWMA) and the metrics."""
        per_query = seconds / queries
        previous = self._per_query
        self._per_query = per_query if previous is None else EWMA_ALPHA * per_query + (1 - EWMA_ALPHA) * previous
        self.metrics.query_seconds.set(self._per_query)
        self.metrics.inference.observe(seconds)
        self.metrics.batch_size.observe(queries)
