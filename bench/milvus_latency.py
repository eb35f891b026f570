"""Search-only latency of the serving backends: FAISS flat vs Milvus Lite over the same vectors, batch 1, k=10.

Query vectors come from a bundle's ONNX encoder over SciFact test queries (encoded once, outside the timing);
each system answers every query once after a warm-up, one call per query, as the service's batcher does at
low load. Milvus Lite runs in process (a ``.db`` file) and as a server process on 127.0.0.1 (the shape the
service and the rebuild job share). Also reported: how often Milvus's top-10 ids equal FAISS's.

    flock /tmp/bench.lock python bench/milvus_latency.py --readme
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
from readme_block import replace_block

from scalingnote.beir import load_dataset
from scalingnote.index.backend import SearchIndex
from scalingnote.index.milvus_backend import MilvusIndex, MilvusStore
from scalingnote.index.store import LoadedIndex
from scalingnote.index.versions import publish_version
from scalingnote.paths import data_root
from scalingnote.runtime.bundle import BundleEncoder
from scalingnote.training.render import cpu_model

HERE = Path(__file__).parent
REPO = HERE.parent
BLOCK = "milvus_latency"
K, WARMUP = 10, 30


@contextmanager
def lite_server(data: Path, port: int) -> Iterator[str]:
    """``python -m milvus_lite server`` on 127.0.0.1:``port`` until the block ends."""
    cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data), "--host", "127.0.0.1"]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def connect_retrying(uri: str, timeout: float = 60) -> MilvusStore:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return MilvusStore.connect(uri, "bench")
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def timed(index: SearchIndex, queries: np.ndarray) -> tuple[dict, list[list[str]]]:
    """p50/p99/mean of one ``hits`` call per query (batch 1), and each query's top-k ids."""
    for q in queries[:WARMUP]:
        index.hits(q[None], K)
    times, top = [], []
    for q in queries:
        t0 = time.perf_counter()
        (row,) = index.hits(q[None], K)
        times.append(time.perf_counter() - t0)
        top.append([h.id for h in row])
    ms = np.array(times) * 1e3
    stats = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": ms.mean()}
    return {k: round(float(v), 3) for k, v in stats.items()} | {"queries": len(queries)}, top


def measure(index_dir: Path, queries: np.ndarray, port: int) -> list[dict]:
    """One row per system; ``same_top10``: share of queries whose top-10 ids (in order) equal FAISS's."""
    faiss.omp_set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="milvus-bench-"))
    publish_version(index_dir, work / "root")
    loaded = LoadedIndex.load(index_dir)
    systems: list[tuple[str, Callable[[], SearchIndex]]] = [("faiss flat (in process)", lambda: loaded)]
    rows, reference = [], None
    embedded = connect_retrying(str(work / "lite.db"))
    with lite_server(work / "server", port) as uri:
        served = connect_retrying(uri)
        for label, store in (("milvus lite (in process, .db)", embedded), ("milvus lite (server process)", served)):
            store.sync(work / "root")
            systems.append((label, lambda s=store: MilvusIndex.open(s.client, s.resolve())))
        for label, make in systems:
            stats, top = timed(make(), queries)
            reference = reference or top
            same = float(np.mean([a == b for a, b in zip(top, reference, strict=True)]))
            rows.append({"system": label, **stats, "same_top10": round(same, 4)})
            print(f"{label:36} p50 {stats['p50_ms']:7.3f} ms  p99 {stats['p99_ms']:7.3f} ms  same {same:.3f}")
    return rows


def write_readme(rows: list[dict], meta: dict) -> None:
    lines = [
        "## Serving backends: FAISS vs Milvus Lite, search only (`bench/milvus_latency.py`)",
        "",
        f"`{meta['command']}` — {meta['machine']}, {meta['finished']}, index {meta['index']} ({meta['docs']} docs,"
        f" dim {meta['dim']}), {meta['queries']} searches ({meta['repeat']} passes over the SciFact test queries,"
        f" encoded by {meta['bundle']}), k={K}, batch 1,"
        f" one thread; load average at the end {meta['load_average'][0]:.1f} (a shared machine). Search only:"
        " the ONNX encode (the same for every backend) is not timed.",
        "",
        "| backend | p50 ms | p99 ms | mean ms | top-10 = FAISS's |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['system']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} | {r['same_top10']:.1%} |"
        for r in rows
    ]
    replace_block(BLOCK, "\n".join(lines))


def main() -> None:
    demo = REPO / "artifacts" / "demo"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=demo / "teacher-index", help="A flat index directory.")
    ap.add_argument("--bundle", type=Path, default=demo / "bundle", help="Bundle that encodes the queries.")
    ap.add_argument("--repeat", type=int, default=2, help="Passes over the queries.")
    ap.add_argument("--port", type=int, default=19531, help="Port of the Milvus Lite server process.")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "milvus_latency.json")
    ap.add_argument("--readme", action="store_true", help="Rewrite this benchmark's table in bench/README.md.")
    args = ap.parse_args()

    texts = list(load_dataset(data_root() / "scifact", ("test",)).split_queries("test").values())
    encoder = BundleEncoder(args.bundle, threads=1, spin=False)
    queries = np.vstack([encoder.encode(texts)] * args.repeat)
    t0 = time.time()
    rows = measure(args.index, queries, args.port)
    manifest = LoadedIndex.load(args.index).manifest
    meta = {
        "command": "python bench/milvus_latency.py" + (" --readme" if args.readme else ""),
        "machine": f"{os.cpu_count()} CPU(s), {cpu_model()}",
        "load_average": os.getloadavg(),
        "index": str(args.index.relative_to(REPO) if args.index.is_relative_to(REPO) else args.index),
        "docs": manifest.count,
        "dim": manifest.space.dim,
        "bundle": encoder.name,
        "queries": len(queries),
        "repeat": args.repeat,
        "seconds": round(time.time() - t0, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if args.readme:
        write_readme(rows, meta)


if __name__ == "__main__":
    main()
