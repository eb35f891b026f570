"""Faults of issue #10 in the service, in process over the tiny tower (real ONNX Runtime + FAISS).

Faults are injected by replacing ``run_batch`` (or ``hits``) on a test's own engine after warm-up.
Every wait is bounded; time bounds are generous.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from scalingnote.index import versions
from scalingnote.service.app import create_app
from scalingnote.service.batcher import Batcher, Overloaded
from scalingnote.service.engine import BatchOutput, Engine
from scalingnote.service.metrics import Metrics
from scalingnote.service.settings import Settings
from tests.conftest import SCALINGNOTE, Space, index_root, server_env
from tests.test_faults_index import copy_as_version

API_KEY = "faults-key-0123456789abcdef0123456789"
ADMIN = {"X-API-Key": API_KEY}
V1, V2, V3 = "20000101T000000Z-aaaaa1", "20000102T000000Z-bbbbb2", "20000103T000000Z-ccccc3"


def _settings(tiny: Space, **overrides: object) -> Settings:
    base: dict = {"bundle": tiny.bundle, "index_root": tiny.index, "api_key": API_KEY, "reload_poll_seconds": 0}
    return Settings(_env_file=None, **(base | overrides))  # type: ignore[call-arg]


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def base(tiny: Space) -> Engine:
    return Engine.from_settings(_settings(tiny))


@pytest.fixture
def engine(base: Engine, tiny: Space) -> Engine:
    """A fresh engine on the tiny index (sharing the module's encoder), free to be tampered with."""
    return Engine(base.encoder, tiny.index)


class Gate:
    """Wraps ``engine.run_batch``: records the texts it computes; a batch holding ``trigger`` blocks until opened."""

    def __init__(self, engine: Engine, trigger: str = "wedge") -> None:
        self.real, self.trigger = engine.run_batch, trigger
        self.computed: list[str] = []
        self.entered, self.opened = threading.Event(), threading.Event()
        engine.run_batch = self  # type: ignore[method-assign]

    def __call__(self, texts: list[str], k: object) -> BatchOutput:
        self.computed += texts
        if self.trigger in texts:
            self.entered.set()
            assert self.opened.wait(60), "gate never opened"
        return self.real(texts, k)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- admin during a rebuild


def test_rollback_during_a_rebuild_gets_409_at_once_and_the_rebuild_still_publishes(
    tiny: Space, second_corpus: Path, tmp_path: Path, monkeypatch
) -> None:
    root = index_root(tmp_path / "root", *(copy_as_version(tiny.index, tmp_path / v, v) for v in (V1, V2)))
    adopting, finish = threading.Event(), threading.Event()
    real_adopt = versions._adopt

    def held_adopt(*args) -> None:  # the rebuild holds ROOT/.lock here, as it does while adopting
        adopting.set()
        assert finish.wait(60)
        real_adopt(*args)

    monkeypatch.setattr(versions, "_adopt", held_adopt)
    settings = _settings(tiny, index_root=root, lock_timeout_s=0.2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c, ThreadPoolExecutor(2) as pool:
        build = pool.submit(versions.rebuild, root, second_corpus, str(tiny.model), progress=False)
        try:
            assert adopting.wait(120), "the rebuild never reached adoption"
            started = time.monotonic()
            rollback = pool.submit(c.post, "/admin/rollback", headers=ADMIN).result(timeout=30)
            pinned = pool.submit(c.post, "/admin/reload", headers=ADMIN, json={"version": V1}).result(timeout=30)
            elapsed = time.monotonic() - started
        finally:
            finish.set()
        new = build.result(timeout=120).version
        for r in (rollback, pinned):
            assert r.status_code == 409 and r.json()["error"] == "conflict", r.text
            assert "busy" in r.json()["message"] and V2 in r.json()["message"]
        assert elapsed < 20, "answered at once, not after the rebuild"
        assert versions.current_version(root) == new, "the rebuild published; no stale rollback over it"
        assert c.post("/admin/reload", headers=ADMIN).json()["index_version"] == new
        r = c.post("/admin/rollback", headers=ADMIN)  # and once it is done, a rollback works
        assert r.status_code == 200 and r.json()["index_version"] == V2 == versions.current_version(root)


def test_a_rebuild_embeds_without_holding_the_writer_lock(
    tiny: Space, second_corpus: Path, tmp_path: Path, monkeypatch
) -> None:
    import scalingnote.index.build as build

    root = index_root(tmp_path / "root", tiny.index)
    real_build, free = build.build_index, []

    def build_index(*args, **kwargs):
        with versions.locked(root, timeout=0):  # raises LockBusy if the rebuild held it
            free.append(True)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(build, "build_index", build_index)
    new = versions.rebuild(root, second_corpus, str(tiny.model), progress=False)
    assert free == [True] and versions.current_version(root) == new.version


# ------------------------------------------------------------------------------------------ start-up fallback


def test_a_restart_on_a_mismatched_or_corrupt_current_serves_the_last_good_version(
    tiny: Space, other_space: Space, tmp_path: Path, caplog
) -> None:
    good = copy_as_version(tiny.index, tmp_path / V1, V1)
    mismatched = copy_as_version(other_space.index, tmp_path / V2, V2)  # a rebuild with a retrained doc tower
    corrupt = copy_as_version(tiny.index, tmp_path / V3, V3)
    root = index_root(tmp_path / "root", good, mismatched, corrupt)
    (root / "versions" / V3 / "index.faiss").write_bytes(b"garbage")
    assert versions.current_version(root) == V3
    caplog.set_level(logging.WARNING, logger="scalingnote.service")
    with TestClient(create_app(_settings(tiny, index_root=root))) as c:
        assert c.get("/readyz").json() == {"status": "ready", "index_version": V1}
        assert c.post("/search", json={"query": "gene"}).json()["index_version"] == V1
    lines = [r.getMessage() for r in caplog.records]
    assert any(V3 in line and "checksum mismatch" in line for line in lines), lines
    assert any(V2 in line and "different embedding spaces" in line for line in lines), lines
    assert any(line.startswith(f"serving index version {V1}") and V2 in line and V3 in line for line in lines)


# ---------------------------------------------------------------------------------------- supervision, health


def test_a_wedged_inference_thread_makes_readyz_503_then_it_recovers(tiny: Space, engine: Engine) -> None:
    settings = _settings(tiny, stall_timeout_s=0.3, request_timeout_s=60)
    with TestClient(create_app(settings, engine)) as c, ThreadPoolExecutor(1) as pool:
        gate = Gate(engine)
        assert c.get("/readyz").status_code == 200
        wedged = pool.submit(c.post, "/search", json={"query": "wedge"})
        try:
            assert gate.entered.wait(30)
            _wait_for(lambda: c.get("/readyz").status_code == 503)
            assert c.get("/readyz").json()["status"] == "stalled"
            assert c.get("/healthz").status_code == 200
        finally:
            gate.opened.set()
        assert wedged.result(timeout=60).status_code == 200
        _wait_for(lambda: c.get("/readyz").status_code == 200)


def _batcher(engine: Engine, **kwargs: object) -> Batcher:
    return Batcher(engine, Metrics(), **({"max_batch_size": 8, "max_wait_us": 0, "max_queue": 64} | kwargs))  # type: ignore[arg-type]


def test_a_dead_batcher_task_is_restarted(engine: Engine, caplog) -> None:
    async def main() -> BatchOutput:
        batcher = _batcher(engine)
        real_gather, calls = batcher._gather, []

        async def crash_once():
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("bug in the worker")
            return await real_gather()

        batcher._gather = crash_once  # type: ignore[method-assign]
        batcher.start()
        try:
            return await asyncio.wait_for(batcher.submit(["gene"], 2), timeout=30)
        finally:
            await batcher.stop()

    out = asyncio.run(main())
    assert len(out.hits[0]) == 2
    assert any("batcher task died" in r.getMessage() for r in caplog.records)


def test_the_poller_survives_unexpected_errors(tiny: Space, engine: Engine, tmp_path: Path, caplog) -> None:
    root = index_root(tmp_path / "root", copy_as_version(tiny.index, tmp_path / V1, V1))
    eng = Engine(engine.encoder, root)
    real_watch, calls = eng.watch_target, []

    def flaky_watch() -> str | None:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("stat failed in a way nobody expected")
        return real_watch()

    eng.watch_target = flaky_watch  # type: ignore[method-assign]
    with TestClient(create_app(_settings(tiny, index_root=root, reload_poll_seconds=0.05), eng)) as c:
        _wait_for(lambda: len(calls) > 2)
        versions.publish_version(copy_as_version(tiny.index, tmp_path / V2, V2), root)
        _wait_for(lambda: c.get("/readyz").json().get("index_version") == V2)
    assert any("index poller" in r.getMessage() for r in caplog.records)


def test_faiss_threads_are_set_on_the_inference_thread(tiny: Space, engine: Engine) -> None:
    threads = faiss.omp_get_max_threads() + 3  # differs from this thread's setting
    with TestClient(create_app(_settings(tiny, faiss_threads=threads), engine)) as c:
        batcher = c.app.state.service.batcher  # type: ignore[attr-defined]
        assert c.portal.call(batcher.call, faiss.omp_get_max_threads) == threads  # type: ignore[union-attr]


def test_batches_from_faiss_blas_queries_search_by_blas_with_the_same_hits(tiny: Space, engine: Engine) -> None:
    queries = [f"gene {i} protein" for i in range(8)]
    alone = [engine.run_batch([q], 5).hits[0] for q in queries]
    default = faiss.cvar.distance_compute_blas_threshold
    try:
        with TestClient(create_app(_settings(tiny, faiss_blas_queries=4), engine)):
            assert faiss.cvar.distance_compute_blas_threshold == 4 * engine.encoder.dim
            batched = engine.run_batch(queries, 5).hits  # 8 >= 4 queries: one BLAS product
    finally:
        faiss.cvar.distance_compute_blas_threshold = default
    assert [[h.id for h in hits] for hits in batched] == [[h.id for h in hits] for hits in alone]
    for got, want in zip(batched, alone, strict=True):
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)


# ---------------------------------------------------------------------------------------------------- batches


def test_one_failing_query_fails_alone(engine: Engine) -> None:
    real = engine.run_batch

    def poisoned(texts: list[str], k: object) -> BatchOutput:
        if "poison" in texts:
            raise ValueError("this query breaks the encoder")
        return real(texts, k)  # type: ignore[arg-type]

    engine.run_batch = poisoned  # type: ignore[method-assign]

    async def main() -> list:
        batcher = _batcher(engine)
        batcher.start()
        try:
            jobs = (batcher.submit([q], 2) for q in ("gene one", "poison", "gene two"))
            return await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), timeout=30)
        finally:
            await batcher.stop()

    first, bad, last = asyncio.run(main())
    assert isinstance(bad, ValueError)
    assert isinstance(first, BatchOutput) and isinstance(last, BatchOutput), (first, last)
    assert len(first.hits[0]) == len(last.hits[0]) == 2


def test_a_large_k_does_not_inflate_the_other_queries_of_its_batch(engine: Engine) -> None:
    index, searched = engine.current.index, []
    assert index is not None
    real_hits = index.hits

    def hits(vectors, k: int):
        searched.append((len(vectors), k))
        return real_hits(vectors, k)

    index.hits = hits  # type: ignore[method-assign]

    async def main() -> list[BatchOutput]:
        batcher = _batcher(engine)
        batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(batcher.submit(["a"], 1), batcher.submit(["b"], 150)), 30)
        finally:
            await batcher.stop()

    small, large = asyncio.run(main())
    assert sorted(searched) == [(1, 1), (1, 150)], "one search per k, each only over its own queries"
    assert len(small.hits[0]) == 1 and len(large.hits[0]) == 150


def test_queries_times_k_is_capped_per_request(tiny: Space) -> None:
    with TestClient(create_app(_settings(tiny, max_hits_per_request=2000, max_batch_queries=4))) as c:
        r = c.post("/search/batch", json={"queries": ["a", "b", "c"], "k": 1000})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
        assert "SCALINGNOTE_MAX_HITS_PER_REQUEST" in r.json()["message"]
        assert c.post("/search/batch", json={"queries": ["a", "b"], "k": 1000}).status_code == 200
    with TestClient(create_app(_settings(tiny, max_hits_per_request=100))) as c:
        assert c.post("/search", json={"query": "a", "k": 101}).status_code == 422
        assert c.post("/search", json={"query": "a", "k": 100}).status_code == 200


def test_admission_follows_the_latency_budget(engine: Engine) -> None:
    real = engine.run_batch

    def slow(texts: list[str], k: object) -> BatchOutput:
        time.sleep(0.05 * len(texts))  # at least 50 ms per query
        return real(texts, k)  # type: ignore[arg-type]

    engine.run_batch = slow  # type: ignore[method-assign]

    async def main() -> list:
        batcher = _batcher(engine, max_batch_size=1, queue_budget_s=0.1)
        batcher.start()
        try:
            await asyncio.wait_for(batcher.submit(["seed the estimate"], 1), 30)
            jobs = (batcher.submit([f"gene {i}"], 1) for i in range(10))
            return await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), timeout=60)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) >= 6, "queued x >= 50 ms over a 100 ms budget: at most 3 queued"
    assert all(r.retry_after >= 1 and "budget" in str(r) for r in refused)
    assert all(isinstance(r, BatchOutput) for r in results if not isinstance(r, Overloaded))


async def _disconnecting_request(app, body: dict) -> int:
    """POST /search over raw ASGI from a client that goes away right after sending its body; the status."""
    data = json.dumps(body).encode()
    messages = [{"type": "http.request", "body": data, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/search", "raw_path": b"/search", "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), timeout=20)
    return sent[0]["status"]


def test_a_request_whose_client_went_away_is_never_computed(tiny: Space, engine: Engine) -> None:
    with TestClient(create_app(_settings(tiny, request_timeout_s=60), engine)) as c, ThreadPoolExecutor(1) as pool:
        gate = Gate(engine)
        wedged = pool.submit(c.post, "/search", json={"query": "wedge"})
        try:
            assert gate.entered.wait(30)
            status = c.portal.call(_disconnecting_request, c.app, {"query": "abandoned"})  # type: ignore[union-attr]
        finally:
            gate.opened.set()
        assert status == 499 and wedged.result(timeout=60).status_code == 200
        assert c.post("/search", json={"query": "after"}).status_code == 200
    assert "abandoned" not in gate.computed and "after" in gate.computed


# --------------------------------------------------------------------------------------------------- security


def test_a_short_api_key_refuses_to_start(tiny: Space) -> None:
    cmd = [str(SCALINGNOTE), "serve", "--bundle", str(tiny.bundle), "--index", str(tiny.index), "--port", "0"]
    env = server_env(api_key="too-short-secret")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: invalid settings") and "api_key" in line and "32 characters" in line
    assert "too-short-secret" not in proc.stderr, "the key is never echoed"


def test_metrics_and_docs_can_require_the_api_key(tiny: Space) -> None:
    with pytest.raises(ValidationError, match="needs an api_key"):
        _settings(tiny, api_key=None, protect_metrics_docs=True)
    with TestClient(create_app(_settings(tiny, protect_metrics_docs=True))) as c:
        for path in ("/metrics", "/docs", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", (path, r.text)
            assert c.get(path, headers=ADMIN).status_code == 200
            assert c.get(path, headers={"X-API-Key": "x" * 40}).status_code == 401
        assert c.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        assert c.post("/search", json={"query": "gene"}).status_code == 200, "search stays open"
        assert c.get("/readyz").status_code == 200


def test_budget_refusals_need_a_sustained_overload() -> None:
    from scalingnote.service.batcher import SustainedOverload

    state = SustainedOverload(interval=0.1)
    assert not state.update(True, 0.0) and not state.update(True, 0.09), "a short stall is waited out"
    assert not state.update(False, 0.095) and not state.update(True, 0.1), "and a dip restarts the clock"
    assert state.update(True, 0.2), "over budget for the whole interval: shed"
    assert state.update(False, 0.25) and state.update(True, 0.26), "a dip under budget does not stop shedding"
    assert state.update(False, 0.3) and not state.update(False, 0.4), "under budget for the interval: stop"
    # bursts after an overload: each finds the server idle, so shedding ends, and none lasts the interval
    assert not state.update(True, 0.5) and state.update(True, 0.61), "shedding again"
    for start in (0.7, 0.8, 0.9):
        assert not state.update(False, start, idle=True), "an idle server stops shedding"
        assert not state.update(True, start + 0.02), "a burst's over-budget tail is admitted"
        now = SustainedOverload(interval=0.0)
    assert now.update(True, 0.0) and not now.update(False, 0.0), "interval 0: at once, both ways"
