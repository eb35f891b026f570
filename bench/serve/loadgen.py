"""Build and drive ``loadgen.c`` (open loop: Poisson, even or burst arrivals; or closed loop) and summarise it.

Why C: the load generator shares the 2 cores with the server, and Python generators under-report
throughput there by 22-43 %; Debian's ``wrk`` is closed-loop only and ``hey -q`` cannot vary bodies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("loadgen.c")
REPO = Path(__file__).resolve().parents[2]
MSMARCO_QUERIES = Path("msmarco-passage-dev-small") / "queries.tsv"


def build(out_dir: Path | None = None) -> Path:
    """Compile ``loadgen.c`` (once per source change) and return the binary."""
    out_dir = Path(out_dir or REPO / ".cache" / "bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "loadgen"
    if binary.is_file() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        raise RuntimeError("a C compiler is needed to build bench/serve/loadgen.c (apt-get install gcc)")
    tmp = out_dir / f".loadgen.{os.getpid()}"
    subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(SOURCE), "-lm"], check=True)
    os.replace(tmp, binary)
    return binary


def read_queries(path: Path) -> list[str]:
    """Query texts of a ``qid<TAB>text`` file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1].strip() for line in lines if "\t" in line and line.split("\t", 1)[1].strip()]


def write_bodies(path: Path, bodies: Sequence[dict]) -> Path:
    """One JSON body per line, as loadgen reads them."""
    Path(path).write_text("".join(json.dumps(b, ensure_ascii=False) + "\n" for b in bodies), encoding="utf-8")
    return Path(path)


@dataclass
class LoadResult:
    """Loadgen's summary plus per-request arrays (latency in ms from the due time; status; captured; the
    Retry-After header's value, -1 when absent)."""

    summary: dict
    due_s: np.ndarray
    latency_ms: np.ndarray
    status: np.ndarray
    captured: list[str]
    retry_after: np.ndarray

    @property
    def failed(self) -> int:
        """Requests that did not get a 2xx: other statuses, connection errors, timeouts, never sent."""
        return int(((self.status < 200) | (self.status >= 300)).sum())

    def stats(self) -> dict:
        """Throughput (2xx answers per second until the last one) and latency percentiles of the 2xx answers."""
        ok = (self.status >= 200) & (self.status < 300)
        lat = self.latency_ms[ok]
        if self.summary["mode"] == "closed" or not ok.any():
            span = self.summary["elapsed_s"]
        else:  # open loop: until the last answer, so a backlog drained after the run does not count as served
            span = max(self.summary["duration_s"], float((self.due_s + self.latency_ms / 1e3)[ok].max()))
        codes, counts = np.unique(self.status, return_counts=True)
        pct = {f"p{q:g}": float(np.percentile(lat, q)) for q in (50, 90, 95, 99, 99.9)} if len(lat) else {}
        if len(lat):
            pct |= {"mean": float(lat.mean()), "max": float(lat.max())}
        return {
            "mode": self.summary["mode"],
            "arrivals": self.summary["arrivals"] or None,
            "burst": self.summary["burst"] if self.summary["arrivals"] == "burst" else None,
            "rate": self.summary["rate"] or None,
            "concurrency": self.summary["concurrency"] or None,
            "duration_s": self.summary["duration_s"],
            "requests": len(self.status),
            "ok": int(ok.sum()),
            "failed": self.failed,
            "status": {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)},
            "throughput_rps": round(float(ok.sum()) / span, 1) if span > 0 else 0.0,
            "latency_ms": {k: round(v, 3) for k, v in pct.items()},
        }


def run(
    binary: Path,
    port: int,
    bodies: Path,
    *,
    rate: float | None = None,
    concurrency: int | None = None,
    duration: float,
    path: str = "/search",
    host: str = "127.0.0.1",
    connections: int = 64,
    timeout: float = 10.0,
    capture: str | None = None,
    headers: Sequence[str] = (),
    arrivals: str = "poisson",
    burst: int = 1,
    seed: int = 1,
) -> LoadResult:
    """One bounded run (``duration`` seconds plus at most ``timeout`` to drain) against ``host:port``.

    Open loop (``rate``): ``arrivals`` is ``poisson`` (seeded exponential gaps), ``even`` (request i at i/rate) or
    ``burst`` (``burst`` requests at once every burst/rate seconds)."""
    if (rate is None) == (concurrency is None):
        raise ValueError("give exactly one of rate (open loop) or concurrency (closed loop)")
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        out = Path(tmp) / "requests.tsv"
        cmd = [str(binary), "--host", host, "--port", str(port), "--path", path, "--bodies", str(bodies)]
        cmd += ["--duration", str(duration), "--timeout", str(timeout), "--out", str(out)]
        cmd += ["--rate", str(rate)] if rate is not None else ["--concurrency", str(concurrency)]
        cmd += ["--connections", str(connections), "--arrivals", arrivals, "--burst", str(burst), "--seed", str(seed)]
        cmd += ["--capture", capture] if capture else []
        for header in headers:
            cmd += ["--header", header]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 2 * timeout + 30, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr.strip()}")
        summary = json.loads(proc.stdout)
        rows = [line.split("\t") for line in out.read_text().splitlines()]
    due = np.array([int(r[1]) for r in rows], dtype=np.float64) / 1e6
    latency = np.array([int(r[2]) for r in rows], dtype=np.float64) / 1e3
    status = np.array([int(r[3]) for r in rows], dtype=np.int64)
    retry_after = np.array([int(r[5]) for r in rows], dtype=np.int64)
    return LoadResult(summary, due, latency, status, [r[4] for r in rows], retry_after)
