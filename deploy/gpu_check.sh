#!/usr/bin/env bash
# GPU acceptance check for scalingnote serving. Run it on a machine with an NVIDIA GPU where the repo is
# installed with the gpu extra (onnxruntime-gpu + faiss-gpu, no onnxruntime/faiss-cpu), e.g. inside the
# serve-gpu image:  docker run --rm --gpus all -v scalingnote_artifacts:/artifacts \
#                     --entrypoint bash scalingnote/serve-gpu:0.1.0 /path/to/gpu_check.sh
#
# Usage: deploy/gpu_check.sh [BUNDLE_DIR [INDEX_ROOT]]
#   BUNDLE_DIR  model bundle (bundle.json, model.onnx, tokenizer.json)   default: $SCALINGNOTE_BUNDLE
#   INDEX_ROOT  index root (versions/<id>/ + current)                     default: $SCALINGNOTE_INDEX_ROOT
# Environment (all optional):
#   PYTHON=python3           interpreter that has scalingnote installed
#   PORT=18000               loopback port for the temporary server (only 127.0.0.1 is ever used)
#   SEQ_REQUESTS=2000        sequential /search requests
#   CONC_REQUESTS=4000       requests in the concurrent phase
#   CONCURRENCY=16           client threads in the concurrent phase
#   STEP_TIMEOUT=300         seconds allowed for each step (server start-up included)
#   P99_MAX_MS=              fail when the sequential p99 exceeds this many milliseconds (report only if empty)
#   QUERIES=                 a BEIR queries.jsonl to draw query texts from (built-in texts if empty)
#
# Steps: (1) ONNX Runtime lists CUDAExecutionProvider and a session on the bundle uses it, with embeddings that
# match a CPU session; (2) a faiss GPU Flat index returns the same top-10 as the CPU one on random data and on
# the real index; (3) `scalingnote serve` on 127.0.0.1, /readyz, then /search p50/p99 sequential and concurrent.
# Exit status: 0 when every step passed, 1 on a failed check, 2 on a usage error.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi
if (($# > 2)); then
    usage >&2
    exit 2
fi

BUNDLE="${1:-${SCALINGNOTE_BUNDLE:-}}"
INDEX_ROOT="${2:-${SCALINGNOTE_INDEX_ROOT:-}}"
PYTHON="${PYTHON:-python3}"
HOST=127.0.0.1
PORT="${PORT:-18000}"
SEQ_REQUESTS="${SEQ_REQUESTS:-2000}"
CONC_REQUESTS="${CONC_REQUESTS:-4000}"
CONCURRENCY="${CONCURRENCY:-16}"
STEP_TIMEOUT="${STEP_TIMEOUT:-300}"
P99_MAX_MS="${P99_MAX_MS:-}"
QUERIES="${QUERIES:-}"

die() {
    echo "gpu_check: $*" >&2
    exit 2
}

[[ -n "$BUNDLE" && -n "$INDEX_ROOT" ]] || { usage >&2; die "give BUNDLE_DIR and INDEX_ROOT (or SCALINGNOTE_BUNDLE/SCALINGNOTE_INDEX_ROOT)"; }
[[ -f "$BUNDLE/bundle.json" ]] || die "$BUNDLE is not a model bundle (no bundle.json)"
[[ -e "$INDEX_ROOT/current" ]] || die "$INDEX_ROOT has no current index (no $INDEX_ROOT/current)"
for n in "$PORT" "$SEQ_REQUESTS" "$CONC_REQUESTS" "$CONCURRENCY" "$STEP_TIMEOUT"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "not a positive integer: $n"
done
[[ -z "$P99_MAX_MS" || "$P99_MAX_MS" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "P99_MAX_MS is not a number: $P99_MAX_MS"
[[ -z "$QUERIES" || -f "$QUERIES" ]] || die "QUERIES=$QUERIES is not a file"
command -v timeout > /dev/null || die "needs coreutils timeout"
command -v "$PYTHON" > /dev/null || die "no interpreter $PYTHON (set PYTHON=)"

export GPU_CHECK_BUNDLE="$BUNDLE" GPU_CHECK_INDEX_ROOT="$INDEX_ROOT" GPU_CHECK_PORT="$PORT" \
    GPU_CHECK_SEQ="$SEQ_REQUESTS" GPU_CHECK_CONC="$CONC_REQUESTS" GPU_CHECK_THREADS="$CONCURRENCY" \
    GPU_CHECK_P99_MAX_MS="$P99_MAX_MS" GPU_CHECK_QUERIES="$QUERIES" GPU_CHECK_STEP_TIMEOUT="$STEP_TIMEOUT"

step() {
    echo
    echo "== $* =="
}

# ------------------------------------------------------------------------------------------------------------
step "0. GPU"
if command -v nvidia-smi > /dev/null; then
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
    echo "nvidia-smi not found (continuing: the checks below decide)"
fi

# ------------------------------------------------------------------------------------------------------------
step "1. ONNX Runtime picks CUDAExecutionProvider for the bundle"
timeout "$STEP_TIMEOUT" "$PYTHON" - << 'PY'
import os
import sys

import numpy as np
import onnxruntime as ort

from scalingnote.runtime.bundle import BundleEncoder

providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, "available providers:", providers)
if "CUDAExecutionProvider" not in providers:
    sys.exit("FAIL: CUDAExecutionProvider is not available (onnxruntime CPU build installed, or CUDA/cuDNN missing)")

gpu = BundleEncoder(os.environ["GPU_CHECK_BUNDLE"])
print(f"bundle variant {gpu.variant!r}, session providers {gpu.session.get_providers()}")
if gpu.provider != "CUDAExecutionProvider":
    sys.exit(f"FAIL: the bundle session runs on {gpu.provider}, not CUDAExecutionProvider")

texts = ["what causes heart attacks", "dna mutation and inherited disease", "how do neurons communicate"]
cpu = BundleEncoder(os.environ["GPU_CHECK_BUNDLE"], variant=gpu.variant)
cpu.session = ort.InferenceSession(
    str(cpu.path / cpu.manifest.variants[cpu.variant]), providers=["CPUExecutionProvider"]
)
a, b = gpu.encode(texts), cpu.encode(texts)
cos = float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
print(f"GPU vs CPU embedding cosine (min over {len(texts)} queries): {cos:.5f}")
if cos < 0.99:
    sys.exit(f"FAIL: GPU embeddings differ from CPU ones (cosine {cos:.4f} < 0.99)")
print("PASS")
PY

# ------------------------------------------------------------------------------------------------------------
step "2. faiss GPU Flat index agrees with the CPU one (top-10)"
timeout "$STEP_TIMEOUT" "$PYTHON" - << 'PY'
import os
import sys
from pathlib import Path

import faiss
import numpy as np

from scalingnote.index.store import LoadedIndex

K = 10
ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
print("faiss", faiss.__version__, "GPUs:", ngpu)
if ngpu < 1:
    sys.exit("FAIL: faiss sees no GPU (faiss-cpu installed instead of faiss-gpu?)")
res = faiss.StandardGpuResources()


def agreement(cpu_index, gpu_index, queries):
    """Fraction of queries whose top-K id sets are equal, and the max score gap."""
    ds, ic = cpu_index.search(queries, K)
    dg, ig = gpu_index.search(queries, K)
    same = np.mean([set(x) == set(y) for x, y in zip(ic.tolist(), ig.tolist(), strict=True)])
    return float(same), float(np.max(np.abs(ds - dg)))


rng = np.random.default_rng(0)
base = rng.standard_normal((20000, 384), dtype=np.float32)
base /= np.linalg.norm(base, axis=1, keepdims=True)
queries = rng.standard_normal((500, 384), dtype=np.float32)
queries /= np.linalg.norm(queries, axis=1, keepdims=True)
cpu_index = faiss.IndexFlatIP(384)
cpu_index.add(base)
gpu_index = faiss.index_cpu_to_gpu(res, 0, cpu_index)
same, gap = agreement(cpu_index, gpu_index, queries)
print(f"random 20000x384: identical top-{K} for {same:.1%} of 500 queries, max score gap {gap:.2e}")
failed = same < 0.99 or gap > 1e-3

current = Path(os.environ["GPU_CHECK_INDEX_ROOT"]) / "current"
cpu_real = faiss.read_index(str(current / "index.faiss"))
try:
    gpu_real = faiss.index_cpu_to_gpu(res, 0, cpu_real)
except RuntimeError as exc:
    print(f"real index {current.resolve().name}: {type(cpu_real).__name__} has no GPU implementation "
          f"({str(exc).splitlines()[0]}); the service will search it on the CPU")
else:
    n = min(500, cpu_real.ntotal)
    q = rng.standard_normal((n, cpu_real.d), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    same, gap = agreement(cpu_real, gpu_real, q)
    print(f"real index {current.resolve().name} ({cpu_real.ntotal} x {cpu_real.d}): "
          f"identical top-{K} for {same:.1%} of {n} queries, max score gap {gap:.2e}")
    failed = failed or same < 0.99 or gap > 1e-3
    loaded = LoadedIndex.load(current)
    on_gpu = hasattr(faiss, "GpuIndex") and isinstance(loaded.index, faiss.GpuIndex)
    print(f"the service's loader puts it on the GPU: {on_gpu}")
    failed = failed or not on_gpu
if failed:
    sys.exit("FAIL: GPU and CPU results differ (or the loader kept the index on the CPU)")
print("PASS")
PY

# ------------------------------------------------------------------------------------------------------------
step "3. scalingnote serve on $HOST:$PORT: /readyz, then /search latency"
LOG="$(mktemp -t scalingnote-gpu-check.XXXXXX.log)"
SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2> /dev/null; then
        kill -TERM "$SERVER_PID" 2> /dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2> /dev/null || break
            sleep 0.2
        done
        kill -KILL "$SERVER_PID" 2> /dev/null || true
        wait "$SERVER_PID" 2> /dev/null || true
    fi
    SERVER_PID=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

if "$PYTHON" - << 'PY'; then
import os
import socket
import sys

with socket.socket() as s:
    sys.exit(0 if s.connect_ex(("127.0.0.1", int(os.environ["GPU_CHECK_PORT"]))) == 0 else 1)
PY
    echo "FAIL: something already listens on $HOST:$PORT (set PORT=)" >&2
    exit 1
fi

# The server may live at most: start-up (STEP_TIMEOUT) + the measuring step (2 x STEP_TIMEOUT + 30 s) + slack.
# Everything goes through the SCALINGNOTE_* environment (the same settings the images use).
SCALINGNOTE_BUNDLE="$BUNDLE" SCALINGNOTE_INDEX_ROOT="$INDEX_ROOT" SCALINGNOTE_HOST="$HOST" SCALINGNOTE_PORT="$PORT" \
    timeout --kill-after=10 "$((STEP_TIMEOUT * 3 + 60))" "$PYTHON" -m scalingnote.cli serve > "$LOG" 2>&1 &
SERVER_PID=$!
echo "server pid $SERVER_PID, log $LOG"

timeout "$STEP_TIMEOUT" "$PYTHON" - << 'PY' || { echo "--- server log (tail) ---"; tail -n 40 "$LOG"; exit 1; }
import json
import os
import sys
import time
import urllib.error
import urllib.request

base = f"http://127.0.0.1:{os.environ['GPU_CHECK_PORT']}"
t0 = time.monotonic()
while True:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
            print(f"/readyz {r.status} after {time.monotonic() - t0:.1f}s: {r.read(300).decode(errors='replace')}")
            break
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        time.sleep(0.5)
with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
    print("/healthz", r.status)
with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
    print("/metrics", r.status, f"{len(r.read())} bytes")
body = json.dumps({"query": "what causes heart attacks", "k": 10}).encode()
req = urllib.request.Request(base + "/search", data=body, headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print("/search", r.status, r.read(400).decode(errors="replace"))
except urllib.error.HTTPError as exc:
    sys.exit(f"FAIL: /search answered {exc.code}: {exc.read(400).decode(errors='replace')}")
PY

timeout "$((STEP_TIMEOUT * 2 + 30))" "$PYTHON" - << 'PY' || { echo "--- server log (tail) ---"; tail -n 40 "$LOG"; exit 1; }
import http.client
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PORT = int(os.environ["GPU_CHECK_PORT"])
SEQ, CONC, THREADS = (int(os.environ[k]) for k in ("GPU_CHECK_SEQ", "GPU_CHECK_CONC", "GPU_CHECK_THREADS"))
DEADLINE_S = 0.9 * int(os.environ["GPU_CHECK_STEP_TIMEOUT"])  # per phase; each request also times out at 5 s
texts = [
    "what causes heart attacks", "dna mutation and inherited disease", "how do neurons communicate",
    "influenza transmission by droplets", "mitochondria and cellular respiration", "aspirin and blood clotting",
]
if os.environ.get("GPU_CHECK_QUERIES"):
    with open(os.environ["GPU_CHECK_QUERIES"], encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh if line.strip()][:5000] or texts
bodies = [json.dumps({"query": t, "k": 10}).encode() for t in texts]
local = threading.local()


def one(i: int) -> float:
    """One POST /search on this thread's keep-alive connection; latency in ms."""
    conn = getattr(local, "conn", None)
    if conn is None:
        conn = local.conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle/delayed-ACK 40 ms stalls
    t = time.perf_counter()
    conn.request("POST", "/search", body=bodies[i % len(bodies)], headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    ms = (time.perf_counter() - t) * 1e3
    if resp.status != 200:
        raise RuntimeError(f"/search answered {resp.status}")
    return ms


def report(name: str, lat: list[float], wall: float) -> float:
    a = np.asarray(lat)
    p50, p99 = np.percentile(a, 50), np.percentile(a, 99)
    print(f"{name}: {len(a)} requests, {len(a) / wall:.0f} req/s, "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {a.max():.2f} ms")
    return float(p99)


for i in range(min(50, SEQ)):  # warm-up
    one(i)
lat, t0 = [], time.perf_counter()
for i in range(SEQ):
    lat.append(one(i))
    if time.perf_counter() - t0 > DEADLINE_S:
        print(f"sequential phase stopped at its {DEADLINE_S:.0f}s deadline")
        break
seq_p99 = report("sequential", lat, time.perf_counter() - t0)

t0 = time.perf_counter()
pool = ThreadPoolExecutor(max_workers=THREADS)
try:
    lat = list(pool.map(one, range(CONC), timeout=DEADLINE_S))
finally:
    pool.shutdown(wait=False, cancel_futures=True)
report(f"concurrent ({THREADS} threads)", lat, time.perf_counter() - t0)

limit = os.environ.get("GPU_CHECK_P99_MAX_MS")
if limit and seq_p99 > float(limit):
    sys.exit(f"FAIL: sequential p99 {seq_p99:.2f} ms > {limit} ms")
print("PASS")
PY

stop_server
echo
echo "gpu_check: all steps passed"
