"""A real `scalingnote serve` process on 127.0.0.1: startup guard, no torch, overload, swaps, rollback, fuzzing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from scalingnote.artifacts import read_index_manifest
from scalingnote.index import versions
from scalingnote.index.build import work_dir
from tests.conftest import Space, assert_swap_under_load, index_root, run_cli, write_corpus

API_KEY = "server-test-key-0123456789abcdef0123"
ADMIN = {"X-API-Key": API_KEY}


def _wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_mismatched_bundle_and_index_refuse_to_start(tiny: Space, other_space: Space, tmp_path: Path) -> None:
    for index in (tiny.index, index_root(tmp_path / "root", tiny.index)):
        proc = run_cli("serve", "--bundle", str(other_space.bundle), "--index", str(index), "--port", "0", timeout=120)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: bundle ") and "different embedding spaces" in last, proc.stderr
        assert other_space.model.name in last and "Traceback" not in proc.stderr
    proc = run_cli("serve", "--bundle", str(tmp_path / "absent"), "--index", str(tiny.index), timeout=120)
    assert proc.returncode == 2 and "artifact directory not found" in proc.stderr
    proc = run_cli("serve", "--bundle", str(tiny.bundle), "--index", str(tiny.index), "--port", "-1", timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: invalid settings") and "port" in proc.stderr


def test_the_service_process_never_imports_torch(tiny: Space, serve) -> None:
    script = f"""
import json, sys
from fastapi.testclient import TestClient
from scalingnote.service.app import create_app
from scalingnote.service.settings import Settings
app = create_app(Settings(_env_file=None, bundle={str(tiny.bundle)!r}, index_root={str(tiny.index)!r}))
with TestClient(app) as client:
    r = client.post("/search", json={{"query": "gene", "k": 3}})
    assert r.status_code == 200, r.text
print(json.dumps({{m: m in sys.modules for m in ("torch", "transformers", "onnxruntime", "faiss")}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "torch": False, "transformers": False, "onnxruntime": True, "faiss": True,
    }  # fmt: skip
    with serve(tiny.bundle, tiny.index) as server:  # the real CLI process: no torch library mapped
        server.search()
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "onnxruntime" in maps


def test_overload_gets_429_with_retry_after_and_never_hangs(tiny: Space, serve) -> None:
    async def burst(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            long_query = " ".join(["protein pathway"] * 40)
            reqs = [client.post("/search", json={"query": f"{long_query} {i}", "k": 100}) for i in range(200)]
            return await asyncio.wait_for(asyncio.gather(*reqs), timeout=60)

    with serve(tiny.bundle, tiny.index, max_queue=1, max_batch_size=1, max_batch_queries=1) as server:
        responses = asyncio.run(burst(server.url))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429} and codes.count(429) > 0 and codes.count(200) > 0, codes
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"] == "overloaded"
        server.search()  # recovers at once
        metrics = httpx.get(f"{server.url}/metrics").text
        assert f'scalingnote_requests_total{{route="/search",status="429"}} {codes.count(429)}.0' in metrics
        assert f"scalingnote_rejected_total {codes.count(429)}.0" in metrics


def test_rebuild_and_swap_under_load_fail_no_request(
    tiny: Space, second_corpus: Path, loadgen: ModuleType, serve, tmp_path: Path
) -> None:
    root = index_root(tmp_path / "root", tiny.index)
    old = versions.current_version(root)
    bodies = loadgen.write_bodies(tmp_path / "bodies.jsonl", [{"query": f"gene {w} risk", "k": 10} for w in range(50)])
    with serve(tiny.bundle, root, reload_poll_seconds=0.2, queue_budget_ms=5000) as server:  # swap, not admission

        def rebuild() -> str:
            return versions.rebuild(root, second_corpus, str(tiny.model), progress=False).version

        assert_swap_under_load(loadgen, server, bodies, old, rebuild)


def test_reload_onto_mismatched_or_corrupt_index_is_rejected_and_old_serves_on(
    tiny: Space, other_space: Space, serve, tmp_path: Path
) -> None:
    root = index_root(tmp_path / "root", tiny.index)
    serving = versions.current_version(root)
    with serve(tiny.bundle, root, reload_poll_seconds=0.1, api_key=API_KEY) as server:
        index_root(root, other_space.index)  # a rebuild with the wrong doc tower
        _wait_for(
            lambda: 'scalingnote_index_reloads_total{result="rejected"} 1.0' in httpx.get(f"{server.url}/metrics").text
        )
        assert server.search()["index_version"] == serving
        r = httpx.post(f"{server.url}/admin/reload", headers=ADMIN, timeout=30)
        assert r.status_code == 409 and "different embedding spaces" in r.json()["message"], r.text
        assert serving in r.json()["message"]

        corrupt = tmp_path / "corrupt"
        shutil.copytree(tiny.index, corrupt)
        manifest = read_index_manifest(corrupt).model_copy(update={"version": "29990101T000000Z-c0ffee"})
        (corrupt / "manifest.json").write_text(manifest.model_dump_json())
        index_root(root, corrupt)
        (root / "versions" / manifest.version / "docs.json").write_text('{"ids": []}')
        r = httpx.post(f"{server.url}/admin/reload", headers=ADMIN, timeout=30)
        assert r.status_code == 409 and "checksum mismatch" in r.json()["message"], r.text
        assert server.search()["index_version"] == serving
        assert httpx.get(f"{server.url}/readyz").json()["index_version"] == serving


def test_admin_reload_to_a_version_and_rollback(tiny: Space, second_corpus: Path, serve, tmp_path: Path) -> None:
    from scalingnote.index.build import build_index

    build_index(second_corpus, str(tiny.model), tmp_path / "v2", progress=False)
    root = index_root(tmp_path / "root", tiny.index, tmp_path / "v2")
    v1, v2 = versions.list_versions(root)
    with serve(tiny.bundle, root, reload_poll_seconds=0, api_key=API_KEY) as server:
        assert server.search()["index_version"] == v2
        r = httpx.post(f"{server.url}/admin/rollback", headers=ADMIN, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json() | {"versions": None} == {
            "index_version": v1, "docs": 200, "versions": None, "previous_version": v2, "changed": True,
        }  # fmt: skip
        assert versions.current_version(root) == v1 and server.search()["index_version"] == v1
        r = httpx.post(f"{server.url}/admin/rollback", headers=ADMIN, timeout=30)
        assert r.status_code == 409 and "no version older" in r.json()["message"]
        r = httpx.post(f"{server.url}/admin/reload", headers=ADMIN, json={"version": v2}, timeout=30)
        assert r.status_code == 200 and r.json()["index_version"] == v2
        assert versions.current_version(root) == v2 and server.search()["index_version"] == v2
        r = httpx.get(f"{server.url}/admin/index", headers=ADMIN)
        assert r.json() == {"index_version": v2, "docs": 120, "versions": [v1, v2]}


def test_sigkilled_rebuild_leaves_the_server_on_the_old_version(tiny: Space, serve, tmp_path: Path) -> None:
    root = index_root(tmp_path / "root", tiny.index)
    old = versions.current_version(root)
    corpus = write_corpus(tmp_path / "big", 400, seed=3)
    cmd = [sys.executable, "-m", "scalingnote.cli", "index", "rebuild", "--dataset", str(corpus), "--doc-encoder",
           str(tiny.model), "--root", str(root), "--shard-size", "1", "--batch-size", "1"]  # fmt: skip
    with serve(tiny.bundle, root, reload_poll_seconds=0.1) as server:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shards = work_dir(root / versions.NEXT) / "shards"
        deadline = time.monotonic() + 120
        while len(list(shards.glob("*[0-9].npy"))) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "rebuild not killed half-way"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # several poll intervals
        assert versions.current_version(root) == old and versions.list_versions(root) == [old]
        assert server.search()["index_version"] == old
        assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready", "index_version": old}


def test_no_5xx_from_any_client_input(tiny: Space, serve, tmp_path: Path) -> None:
    """Property-based fuzzing (valid and invalid data) of every operation in the OpenAPI schema, bounded, on an
    index with BM25 and a document store (so every mode, filter and field path runs)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings, strategies
    from schemathesis.checks import not_a_server_error

    from scalingnote.index.build import build_index

    build_index(tiny.corpus, str(tiny.model), tmp_path / "index", progress=False, bm25=True)
    with serve(tiny.bundle, tmp_path / "index", api_key=API_KEY, max_body_bytes=4096) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        search = schema.include(path_regex="^/search")
        for part, examples in ((search, 300), (schema, 100)):
            modes = [part.as_strategy(mode) for mode in schemathesis.GenerationMode]

            @given(case=strategies.one_of(modes))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
            def fuzz(case) -> None:
                case.headers = {"X-API-Key": API_KEY} | dict(case.headers or {})
                case.call_and_validate(checks=[not_a_server_error], timeout=30)

            fuzz()
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'status="5' not in metrics and 'route="/search",status="200"' in metrics


def _spawned_children(pid: int) -> list[int]:
    """Live multiprocessing-spawned children of ``pid`` (uvicorn's worker processes)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _thread_affinities(pid: int) -> list[frozenset[int]]:
    """The CPU set of every thread of process ``pid``."""
    return [frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")]


def test_workers_are_processes_sharing_the_port(tiny: Space, serve) -> None:
    with serve(tiny.bundle, tiny.index, workers=2) as server:
        workers = _spawned_children(server.proc.pid)
        assert len(workers) == 2, workers
        if len(os.sched_getaffinity(0)) >= 2:  # each worker and all its threads on a CPU share of its own
            shares = [set(_thread_affinities(pid)) for pid in workers]
            assert all(len(share) == 1 for share in shares), shares
            assert not next(iter(shares[0])) & next(iter(shares[1])), shares
        answered = set()
        for i in range(40):  # a new connection each: the kernel spreads them over the workers' own sockets
            with httpx.Client(base_url=server.url, timeout=30) as client:
                r = client.post("/search", json={"query": f"gene {i}", "k": 3})
                answered |= set(re.findall(r'scalingnote_process_info\{pid="(\d+)"\}', client.get("/metrics").text))
            assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text
        assert answered == {str(pid) for pid in workers}, "every worker takes connections"
        with pytest.raises(OSError), socket.create_server(("127.0.0.1", server.port)):
            pass  # the port is held, so a second server cannot start on it
    _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))


def test_unpinned_workers_keep_every_cpu(tiny: Space, serve) -> None:
    with serve(tiny.bundle, tiny.index, workers=2, pin_workers=False) as server:
        workers = _spawned_children(server.proc.pid)
        assert len(workers) == 2, workers
        everything = frozenset(os.sched_getaffinity(server.proc.pid))
        assert all(set(_thread_affinities(pid)) == {everything} for pid in workers)
