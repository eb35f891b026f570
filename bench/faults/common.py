"""Shared pieces of the fault benchmark: real servers on 127.0.0.1, index roots, load generators, checks."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np

from scalingnote.artifacts import INDEX_MANIFEST, read_index_manifest, write_manifest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCALINGNOTE = Path(sys.executable).with_name("scalingnote")
KEEP_ENV = ("SCALINGNOTE_DATA_DIR", "SCALINGNOTE_INDEX_CACHE_DIR", "SCALINGNOTE_CACHE_DIR")
API_KEY = "faults-bench-key-0123456789abcdef0123"
ADMIN = {"X-API-Key": API_KEY}
STOP_TIMEOUT_S = 40.0


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


loadgen = _import("bench_serve_loadgen", REPO / "bench" / "serve" / "loadgen.py")


def check(name: str, passed: bool, value: Any = None) -> dict:
    """One pass/fail figure of the run (the run exits 1 if any fails)."""
    return {"name": name, "passed": bool(passed), "value": value}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env(**settings: object) -> dict[str, str]:
    """This environment without inherited ``SCALINGNOTE_*`` settings, plus ``settings`` as such variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SCALINGNOTE_") or k in KEEP_ENV}
    return base | {f"SCALINGNOTE_{k.upper()}": str(v) for k, v in settings.items()}


def tail_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"faults-{prefix}-") as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------------------------- index roots


def copy_as_version(index: Path, dest: Path, version: str) -> Path:
    """A copy of ``index`` whose manifest carries another version id (same files, same checksums)."""
    shutil.copytree(index, dest)
    manifest = read_index_manifest(dest).model_copy(update={"version": version})
    write_manifest(dest, INDEX_MANIFEST, manifest)
    return dest


def make_root(root: Path, index: Path, ids: list[str]) -> Path:
    """An index root holding ``index`` once per id in ``ids`` (the last is current); copies, never the original."""
    from scalingnote.index.versions import publish_version

    for version in ids:
        publish_version(copy_as_version(index, root.parent / f"src-{version}", version), root)
        shutil.rmtree(root.parent / f"src-{version}")
    return root


# ------------------------------------------------------------------------------------------------- servers


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def version(self) -> str | None:
        """The index version /readyz reports (None when not ready or not answering)."""
        try:
            r = httpx.get(f"{self.url}/readyz", timeout=5)
        except httpx.TransportError:
            return None
        return r.json().get("index_version") if r.status_code == 200 else None

    def search(self, query: str = "vitamin d and bone density") -> dict:
        r = httpx.post(f"{self.url}/search", json={"query": query, "k": 3}, timeout=30)
        r.raise_for_status()
        return r.json()


def _launch(bundle: Path, index: Path, work: Path, settings: dict[str, object]) -> Server:
    port = free_port()
    cmd = [str(SCALINGNOTE), "serve", "--bundle", str(bundle), "--index", str(index), "--port", str(port)]
    err = work / f"server-{port}.err"
    with err.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=work, env=env(**settings), stdout=subprocess.DEVNULL, stderr=fh)
    return Server(proc, port, err)


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.proc.kill()
    server.proc.wait()


def _wait_ready(server: Server, timeout: float) -> str | None:
    """Poll /readyz until ready (its version), the process exits or ``timeout`` passes (None for both)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.proc.poll() is None:
        version = server.version()
        if version is not None:
            return version
        time.sleep(0.2)
    return None


@contextmanager
def serving(bundle: Path, index: Path, work: Path, ready_timeout: float = 300, **settings: object) -> Iterator[Server]:
    """``scalingnote serve`` on a free loopback port, ready; stopped (SIGTERM, then SIGKILL) on exit."""
    server = _launch(bundle, index, work, settings)
    try:
        if _wait_ready(server, ready_timeout) is None:
            raise RuntimeError(f"server not ready (exit {server.proc.poll()}): {tail_line(server.stderr.read_text())}")
        yield server
    finally:
        _stop(server)


@dataclass
class StartOutcome:
    """What one start attempt did: exited (``returncode``, stderr) or became ready on ``version``."""

    returncode: int | None
    version: str | None
    stderr: str


def try_start(bundle: Path, index: Path, work: Path, timeout: float = 300, **settings: object) -> StartOutcome:
    """Start a server and see whether it refuses (exits) or serves; it is always stopped again."""
    server = _launch(bundle, index, work, settings)
    try:
        version = _wait_ready(server, timeout)
    finally:
        _stop(server)
    code = None if version is not None else server.proc.returncode
    return StartOutcome(code, version, server.stderr.read_text(errors="replace"))


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB, 0 when the process is gone."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


# -------------------------------------------------------------------------------------------- load, stats


def search_bodies(path: Path, queries: Path | None, k: int = 10) -> Path:
    """/search bodies from a ``qid<TAB>text`` or ``queries.jsonl`` file (default: MS MARCO dev-small)."""
    from scalingnote.beir import load_queries
    from scalingnote.paths import data_root

    source = queries or data_root() / loadgen.MSMARCO_QUERIES
    texts = [t for t in load_queries(source).values() if t.strip()]
    return loadgen.write_bodies(path, [{"query": t, "k": k} for t in texts])


def percentiles(latency_ms: np.ndarray) -> dict[str, float]:
    if not len(latency_ms):
        return {}
    return {f"p{q}": round(float(np.percentile(latency_ms, q)), 3) for q in (50, 90, 99)} | {
        "max": round(float(latency_ms.max()), 3)
    }


def status_counts(status: np.ndarray) -> dict[str, int]:
    codes, counts = np.unique(status, return_counts=True)
    return {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)}


def poisson(
    binary: Path,
    port: int,
    bodies: Path,
    rate: float,
    duration: float,
    connections: int = 256,
    timeout: float = 10.0,
    seed: int = 1,
) -> Any:
    """One bounded open-loop run with Poisson arrivals (``bench/serve/loadgen.c``) against 127.0.0.1."""
    return loadgen.run(
        binary, port, bodies, rate=rate, duration=duration, connections=connections, timeout=timeout, seed=seed
    )
