"""Serving benchmark of ``scalingnote serve`` against three baselines (not a test; loopback only, bounded).

    .venv/bin/python bench/serve/run.py                    # full run (about 20 min on 2 cores)
    .venv/bin/python bench/serve/run.py --quick            # a few seconds per point, to try the harness

Systems, each started as its own process on 127.0.0.1 and measured in turn with the C load generator:

* ``service``: this app, dynamic batching on (the ``SCALINGNOTE_*`` settings in force, see service/README.md);
* ``tier_NAME`` (``--tier NAME=BUNDLE[:HOLD_RATE]``): the same service over another bundle (teacher, static);
* ``d_fastapi_route``: this app with ``SCALINGNOTE_FAST_PATH=false`` (every request through FastAPI's route);
* ``a_no_batching``: this app with ``SCALINGNOTE_MAX_BATCH_SIZE=1``;
* ``b_sentence_transformers``: bench/serve/st_fastapi.py, a plain FastAPI endpoint running sentence-transformers
  (torch) per request over ``--query-model``;
* ``c_infinity``: infinity-emb (its ONNX/optimum engine, own venv in .cache/) serving the query tower's
  backbone, embeddings only (no FAISS), if it installs (``--infinity-venv``; see install_infinity.sh).

Per system: a closed loop at each ``--concurrency`` and an open loop (``--arrivals``, Poisson by default;
latency from each request's due time) at each ``--rates``; the open loop stops at the first rate where the
system saturates. For the service and its tiers it also finds the highest rate holding p99 <= ``--slo-ms``,
holds ``--hold-rate`` (a tier: its own) for ``--hold-duration`` and reads the per-stage histograms of
/metrics around every run (every worker's, told apart by ``scalingnote_process_info``, and summed); for the
service it runs the burst case (``--burst-size`` requests at once, at an average of ``--burst-rate``). Writes
results.json, latency_vs_throughput.png and a table in bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import httpx
import loadgen

from scalingnote.choices import Mode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the README block writer
from readme_block import README, replace_block

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODES = list(get_args(Mode))
MODE_HELP = "/search mode (default dense, as the baselines; an index built with --bm25 would default to hybrid)."
BENCH_BLOCK = "serve-bench"
SATURATED_P99_MS = 1000.0


@dataclass
class System:
    """A server process to benchmark."""

    name: str
    label: str
    cmd: list[str]
    path: str
    bodies: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO
    ready_path: str = "/readyz"
    stages: bool = False  # a scalingnote service: /metrics has the per-stage histograms
    hold_rate: float | None = None  # also hold this rate for --hold-duration (scalingnote services)


@dataclass
class Running:
    system: System
    proc: subprocess.Popen
    port: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live child processes (uvicorn --workers), all threads."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def start(system: System, log_dir: Path, ready_timeout: float = 300) -> Running:
    port = free_port()
    cmd = [c.replace("{port}", str(port)) for c in system.cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALINGNOTE_")} | system.env
    log = (log_dir / f"{system.name}.log").open("w")
    proc = subprocess.Popen(cmd, cwd=system.cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{system.name} exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{system.ready_path}", timeout=2).status_code == 200:
                return Running(system, proc, port)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{system.name} not ready after {ready_timeout} s")
        time.sleep(0.25)


def stop(running: Running) -> None:
    running.proc.send_signal(signal.SIGTERM)
    try:
        running.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.wait()


def cpu_times() -> list[int]:
    """The machine's CPU counters (``/proc/stat``, all cores): user nice system idle iowait irq softirq steal."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def measure(running: Running, binary: Path, **load: Any) -> dict:
    """One bounded load run, plus the server's and the load generator's CPU use (cores), the machine's busy
    and stolen cores (steal: time the hypervisor gave to other guests) and the load average."""
    machine_before = cpu_times()
    scrape_before = scrape_workers(running) if running.system.stages else {}
    before_srv = cpu_seconds(running.proc.pid)
    before_gen = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = loadgen.run(binary, running.port, running.system.bodies, path=running.system.path, timeout=10, **load)
    wall = time.monotonic() - started
    after_gen = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = result.stats()
    stats["server_cpu_cores"] = round((cpu_seconds(running.proc.pid) - before_srv) / wall, 2)
    gen_cpu = (after_gen.ru_utime + after_gen.ru_stime) - (before_gen.ru_utime + before_gen.ru_stime)
    stats["loadgen_cpu_cores"] = round(gen_cpu / wall, 3)
    stats["loadavg_1m"] = round(os.getloadavg()[0], 2)
    delta = [b - a for a, b in zip(machine_before, cpu_times(), strict=True)]
    cores = (os.cpu_count() or 1) / max(sum(delta), 1)
    stats["machine_busy_cores"] = round((sum(delta) - delta[3] - delta[4] - delta[7]) * cores, 2)
    stats["machine_steal_cores"] = round(delta[7] * cores, 2)
    if running.system.stages:
        after = scrape_workers(running)
        stats["stages"] = stage_delta(scrape_before, after)
        stats["stage_workers"] = len(scrape_before.keys() & after.keys())
    p = stats["latency_ms"]
    print(
        f"  {running.system.name:14} {stats['mode']:6} {load.get('rate') or load.get('concurrency'):>6}: "
        f"{stats['throughput_rps']:7.1f} req/s  p50 {p.get('p50', float('nan')):8.2f}  "
        f"p99 {p.get('p99', float('nan')):8.2f} ms  failed {stats['failed']}  "
        f"cpu srv {stats['server_cpu_cores']} gen {stats['loadgen_cpu_cores']} steal {stats['machine_steal_cores']}",
        flush=True,
    )
    return stats


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def scrape_workers(running: Running, tries: int = 64) -> dict[str, str]:
    """One /metrics scrape per server process, by pid: each new connection reaches whichever worker accepts
    it, so scrape until every worker (``SCALINGNOTE_WORKERS``) has answered, or ``tries`` run out."""
    from prometheus_client.parser import text_string_to_metric_families

    workers = int(running.system.env.get("SCALINGNOTE_WORKERS", "1"))
    out: dict[str, str] = {}
    for _ in range(tries):
        text = scrape(running.port)
        for family in text_string_to_metric_families(text):
            if family.name == "scalingnote_process_info":
                out.update({sample.labels["pid"]: text for sample in family.samples})
        if len(out) >= workers:
            break
    return out


def _stage_histograms(text: str) -> dict[str, dict]:
    """``scalingnote_stage_seconds`` of a scrape: per stage, cumulative bucket counts by bound, sum and count."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "scalingnote_stage_seconds":
            continue
        for sample in family.samples:
            stage = out.setdefault(sample.labels["stage"], {"buckets": {}, "sum": 0.0, "count": 0.0})
            if sample.name.endswith("_bucket"):
                stage["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                stage["sum"] = sample.value
            elif sample.name.endswith("_count"):
                stage["count"] = sample.value
    return out


def _quantile(q: float, bounds: list[float], cumulative: list[float]) -> float:
    """Prometheus's histogram_quantile: linear within the bucket that holds the q-th observation."""
    rank, lower, below = q * cumulative[-1], 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def _summed_histograms(scrapes: dict[str, str], pids: set[str]) -> dict[str, dict]:
    """The stage histograms of the processes ``pids``, added up."""
    total: dict[str, dict] = {}
    for pid in pids:
        for stage, hist in _stage_histograms(scrapes[pid]).items():
            acc = total.setdefault(stage, {"buckets": {}, "sum": 0.0, "count": 0.0})
            acc["sum"] += hist["sum"]
            acc["count"] += hist["count"]
            for bound, count in hist["buckets"].items():
                acc["buckets"][bound] = acc["buckets"].get(bound, 0.0) + count
    return total


def stage_delta(before: dict[str, str], after: dict[str, str]) -> dict[str, dict]:
    """Per stage, what one run added over the workers scraped both before and after it (by pid): observations,
    mean and p50/p99 (from the histogram buckets), in ms."""
    pids = before.keys() & after.keys()
    old, new = _summed_histograms(before, pids), _summed_histograms(after, pids)
    out = {}
    for stage, hist in new.items():
        prev = old.get(stage, {"buckets": {}, "sum": 0.0, "count": 0.0})
        count = hist["count"] - prev["count"]
        if count <= 0:
            continue
        bounds = sorted(hist["buckets"])
        cumulative = [hist["buckets"][b] - prev["buckets"].get(b, 0.0) for b in bounds]
        out[stage] = {
            "count": int(count),
            "mean_ms": round((hist["sum"] - prev["sum"]) / count * 1000, 4),
            "p50_ms": round(_quantile(0.5, bounds, cumulative) * 1000, 4),
            "p99_ms": round(_quantile(0.99, bounds, cumulative) * 1000, 4),
        }
    return out


def saturated(stats: dict) -> bool:
    return stats["failed"] > 0.01 * stats["requests"] or stats["latency_ms"].get("p99", 1e9) > SATURATED_P99_MS


def holds(stats: dict, slo_ms: float) -> bool:
    return stats["failed"] == 0 and stats["latency_ms"].get("p99", 1e9) <= slo_ms


def bench_system(running: Running, binary: Path, args: argparse.Namespace, is_service: bool) -> dict:
    """Closed loop, then the open-loop sweep; for scalingnote services also the highest rate within the SLO and
    the hold (at the system's hold rate); for the main service (``is_service``) the burst case too."""
    out: dict = {"closed": [], "open": []}
    loadgen.run(
        binary, running.port, running.system.bodies, path=running.system.path, concurrency=8, duration=args.warmup
    )
    for c in args.concurrency:
        out["closed"].append(measure(running, binary, concurrency=c, duration=args.closed_duration))
    saturated_at = None
    for rate in args.rates:
        if saturated_at is not None:
            out["open"].append({"mode": "open", "rate": rate, "skipped": f"saturated at {saturated_at} req/s"})
            continue
        stats = measure(running, binary, rate=rate, duration=args.duration, arrivals=args.arrivals)
        out["open"].append(stats)
        if saturated(stats):
            saturated_at = rate
    out["saturation_rps"] = max(s["throughput_rps"] for s in out["closed"] + out["open"] if "skipped" not in s)
    system = running.system
    if system.stages:
        out["max_rate_within_slo"] = max_rate(running, binary, args, out["open"])
        if args.hold_duration > 0 and system.hold_rate:
            out["hold"] = measure(
                running, binary, rate=system.hold_rate, duration=args.hold_duration, arrivals=args.arrivals
            )
    if is_service and args.burst_size > 1:
        burst = {"arrivals": "burst", "burst": args.burst_size}
        out["burst"] = measure(running, binary, rate=args.burst_rate, duration=args.duration, **burst)
    return out


def max_rate(running: Running, binary: Path, args: argparse.Namespace, sweep: list[dict]) -> dict:
    """Highest offered rate with p99 <= SLO and no failure: the sweep, then bisection between pass and fail."""
    measured = [s for s in sweep if "skipped" not in s]
    ok = [s["rate"] for s in measured if holds(s, args.slo_ms)]
    lo = max(ok, default=0.0)
    hi = min((s["rate"] for s in measured if s["rate"] > lo and not holds(s, args.slo_ms)), default=None)
    probes: list[dict] = []
    while hi is not None and len(probes) < args.bisect_steps and hi - lo > 10:
        mid = round((lo + hi) / 2)
        stats = measure(running, binary, rate=mid, duration=args.bisect_duration, arrivals=args.arrivals)
        probes.append(stats)
        lo, hi = (mid, hi) if holds(stats, args.slo_ms) else (lo, mid)
    return {"slo_p99_ms": args.slo_ms, "rate": lo, "first_failing_rate": hi, "probes": probes}


def infinity_system(args: argparse.Namespace, bodies: Path, work: Path) -> System | str:
    """The infinity-emb system, or the reason it cannot run here."""
    venv = Path(args.infinity_venv)
    exe = venv / "bin" / "infinity_emb"
    if not exe.is_file():
        proc = subprocess.run(
            ["bash", str(HERE / "install_infinity.sh"), str(venv)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0 or not exe.is_file():
            return f"infinity-emb did not install: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
    from scalingnote.specs import resolve

    backbone = resolve(args.query_model).tower_path("query")
    model_dir = work / f"infinity-{hashlib.sha256(str(backbone).encode()).hexdigest()[:12]}"
    if not (model_dir / "model.onnx").is_file():
        shutil.rmtree(model_dir, ignore_errors=True)
        cli = venv / "bin" / "optimum-cli"
        proc = subprocess.run(
            [str(cli), "export", "onnx", "--model", str(backbone), "--task", "feature-extraction", str(model_dir)],
            capture_output=True,
            text=True,
            check=False,
            env=os.environ | {"HF_HUB_OFFLINE": "1"},
        )
        if proc.returncode != 0:
            return f"optimum ONNX export for infinity failed: {proc.stderr.strip().splitlines()[-1:]}"
    return System(
        "c_infinity",
        "(c) infinity-emb (ONNX, embeddings only)",
        [
            str(exe),
            "v2",
            "--model-id",
            ".",
            "--engine",
            "optimum",
            "--device",
            "cpu",
            "--pooling-method",
            "mean",
            "--batch-size",
            "32",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--no-vector-disk-cache",
        ],
        "/embeddings",
        bodies,
        env={"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"},
        cwd=model_dir,
        ready_path="/health",
    )


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_open, ax_closed) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, res in enumerate(results["systems"].values()):
        if "open" not in res:
            continue
        color = f"C{i}"
        runs = [s for s in res["open"] if "skipped" not in s and "p99" in s["latency_ms"]]
        x = [s["throughput_rps"] for s in runs]
        ax_open.plot(x, [s["latency_ms"]["p99"] for s in runs], "o-", color=color, label=f"{res['label']} p99")
        ax_open.plot(x, [s["latency_ms"]["p50"] for s in runs], "x--", color=color, alpha=0.6, label="p50")
        closed = [s for s in res["closed"] if "p99" in s["latency_ms"]]
        ax_closed.plot(
            [s["throughput_rps"] for s in closed],
            [s["latency_ms"]["p99"] for s in closed],
            "s-",
            color=color,
            label=res["label"],
        )
        for s in closed:
            ax_closed.annotate(f"c={s['concurrency']}", (s["throughput_rps"], s["latency_ms"]["p99"]), fontsize=7)
    slo = results["config"]["slo_ms"]
    for ax, title in ((ax_open, "open loop (offered rate)"), (ax_closed, "closed loop (concurrency 1/8/32)")):
        ax.axhline(slo, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("throughput (2xx req/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_open.legend(fontsize=7, loc="best")
    ax_closed.legend(fontsize=7)
    fig.suptitle(f"/search latency vs throughput, {results['machine']['cores']} cores, loopback")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    cfg, systems = results["config"], results["systems"]
    lines = [
        "## Serving: `/search` latency and throughput (`bench/serve`)",
        "",
        f"`{cfg['command']}` — {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"{results['started']}, {results['wall_s'] / 60:.0f} min. Bundle `{cfg['bundle_name']}` "
        f"({cfg['variant']}), index {cfg['index_docs']} docs; queries: MS MARCO dev-small, k=10. "
        "Load from `bench/serve/loadgen.c` on the same machine (open loop: "
        f"{cfg.get('arrivals', 'even')} arrivals, latency counted from each request's due time). "
        "Load average during the runs is in results.json. Service settings: "
        + (" ".join(f"`{k}={v}`" for k, v in cfg.get("service_env", {}).items()) or "the defaults")
        + ". Stolen cores: CPU time the hypervisor gave to other guests during the run (`/proc/stat` steal).",
        "",
    ]
    if cfg["bundle_name"].startswith("proxy-"):
        lines += [
            f"`{cfg['bundle_name']}` is a latency proxy for the distilled student (the first layers of "
            "all-MiniLM-L6-v2, untrained: `bench/serve/proxy_student.py`), not a trained model.",
            "",
        ]
    lines += [
        "| system | loop | offered | throughput (req/s) | p50 ms | p95 ms | p99 ms | failed | server CPU (cores) "
        "| stolen (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in systems.values():
        if "open" not in res:
            continue
        for s in res["closed"] + res["open"]:
            offered = f"c={s['concurrency']}" if s["mode"] == "closed" else f"{s['rate']:g}/s"
            if "skipped" in s:
                lines.append(f"| {res['label']} | open | {offered} | {s['skipped']} | | | | | | |")
                continue
            p = s["latency_ms"]
            lines.append(
                f"| {res['label']} | {s['mode']} | {offered} | {s['throughput_rps']:.1f} | {_fmt(p.get('p50'), 2)} | "
                f"{_fmt(p.get('p95'), 2)} | {_fmt(p.get('p99'), 2)} | {s['failed']} | {s['server_cpu_cores']} | "
                f"{s.get('machine_steal_cores', '–')} |"
            )
    service = systems.get("service", {})
    lines += ["", "**Summary**", ""]
    for res in systems.values():
        if "max_rate_within_slo" in res:
            m = res["max_rate_within_slo"]
            lines.append(
                f"- {res['label']}: highest offered rate with p99 ≤ {m['slo_p99_ms']:g} ms and 0 errors: "
                f"**{m['rate']:g} req/s** (first failing: {_fmt(m['first_failing_rate'], 0)})"
            )
        if "hold" in res:
            h = res["hold"]
            lines.append(
                f"- {res['label']}: hold {h['rate']:g} req/s ({h['arrivals']}) for {h['duration_s']:g} s: "
                f"p50 {_fmt(h['latency_ms'].get('p50'), 2)} ms, p99 {_fmt(h['latency_ms'].get('p99'), 2)} ms, "
                f"{h['failed']} failed of {h['requests']}"
            )
    if "burst" in service:
        b = service["burst"]
        lines.append(
            f"- {service['label']}: bursts of {b['burst']} at once, {b['rate']:g} req/s on average, "
            f"{b['duration_s']:g} s: p50 {_fmt(b['latency_ms'].get('p50'), 2)} ms, "
            f"p99 {_fmt(b['latency_ms'].get('p99'), 2)} ms, {b['failed']} failed of {b['requests']}"
        )
    base = service.get("saturation_rps")
    for res in systems.values():
        if "saturation_rps" in res:
            baseline = base and res is not service and not res["label"].startswith("service, ")
            ratio = f" (service = {base / res['saturation_rps']:.2f}×)" if baseline else ""
            runs = [s["loadavg_1m"] for s in res["closed"] + res["open"] if "loadavg_1m" in s]
            load = f"; machine load average during its runs {min(runs):.1f}–{max(runs):.1f}" if runs else ""
            lines.append(f"- saturation throughput {res['label']}: {res['saturation_rps']:.1f} req/s{ratio}{load}")
        elif "skipped" in res:
            lines.append(f"- {res['label']}: not run ({res['skipped']})")
    return "\n".join(lines + stage_table(systems)) + "\n"


def stage_table(systems: dict) -> list[str]:
    """Where a request's time goes, per service and tier, in its hold run (else its last open-loop run)."""
    rows = []
    for res in systems.values():
        runs = [res["hold"]] if "hold" in res else [s for s in res.get("open", []) if "stages" in s][-1:]
        if runs and runs[0].get("stages"):
            rows.append((res["label"], runs[0]))
    if not rows:
        return []
    stages = ("parse", "queue", "tokenize", "encode", "search", "serialize")
    lines = [
        "",
        "**Where the time goes** (server-side per-stage histograms from `/metrics`, mean / p99 in ms; parse, queue "
        "and serialize per request, tokenize, encode and search per batch; summed over the server's workers):",
        "",
        "| system | run | " + " | ".join(stages) + " | mean batch |",
        "|---|---|" + "---|" * len(stages) + "---|",
    ]
    for label, run in rows:
        st = run["stages"]
        cells = [f"{st[x]['mean_ms']:.3f} / {st[x]['p99_ms']:.3f}" if x in st else "–" for x in stages]
        batch = st["queue"]["count"] / st["encode"]["count"] if "queue" in st and "encode" in st else None
        lines.append(f"| {label} | {run['rate']:g}/s | " + " | ".join(cells) + f" | {_fmt(batch, 2)} |")
    return lines


def update_readme(section: str, name: str = BENCH_BLOCK) -> None:
    """Replace only the ``name`` block of bench/README.md."""
    replace_block(name, section)


def parse_args() -> argparse.Namespace:
    def floats(s: str) -> list[float]:
        return [float(x) for x in s.split(",")]

    def ints(s: str) -> list[int]:
        return [int(x) for x in s.split(",")]

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "bundle-minilm")
    p.add_argument("--index", type=Path, default=REPO / "artifacts" / "minilm-scifact", help="Index dir or root.")
    p.add_argument("--name", default="student", help="What --bundle is, for the labels (e.g. 4-layer int8).")
    p.add_argument("--query-model", default="minilm-l6", help="Query model of baselines b and c (built-in or dir).")
    p.add_argument("--queries", type=Path, default=None, help="qid<TAB>text (default: MS MARCO dev-small).")
    p.add_argument("--mode", choices=MODES, default="dense", help=MODE_HELP)
    p.add_argument("--rates", type=floats, default=[100, 200, 300, 400, 600])
    p.add_argument("--duration", type=float, default=30.0, help="Seconds per open-loop rate.")
    p.add_argument("--arrivals", choices=["poisson", "even"], default="poisson", help="Open-loop arrivals.")
    p.add_argument("--burst-size", type=int, default=30, help="Burst case: requests at once (1: no burst case).")
    p.add_argument("--burst-rate", type=float, default=300.0, help="Burst case: average req/s.")
    p.add_argument("--concurrency", type=ints, default=[1, 8, 32])
    p.add_argument("--closed-duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--slo-ms", type=float, default=10.0)
    p.add_argument("--bisect-steps", type=int, default=3)
    p.add_argument("--bisect-duration", type=float, default=20.0)
    p.add_argument("--hold-rate", type=float, default=300.0)
    p.add_argument("--hold-duration", type=float, default=60.0)
    p.add_argument("--systems", default="service,d_fastapi_route,a_no_batching,b_sentence_transformers,c_infinity")
    p.add_argument(
        "--tier",
        action="append",
        default=[],
        help="NAME=BUNDLE[:HOLD_RATE]: another bundle served the same way (sweep, SLO rate, hold), for the figure.",
    )
    p.add_argument("--infinity-venv", type=Path, default=REPO / ".cache" / "infinity-venv")
    p.add_argument("--out-dir", type=Path, default=HERE)
    p.add_argument("--quick", action="store_true", help="3-5 s per point, no hold, no README: to try the harness.")
    p.add_argument("--render", type=Path, help="Only redraw the PNG and README table from this results.json.")
    args = p.parse_args()
    if args.quick:
        args.duration, args.closed_duration, args.warmup = 5.0, 3.0, 2.0
        args.bisect_duration, args.hold_duration, args.bisect_steps = 3.0, 0.0, 1
    return args


def main() -> None:
    from scalingnote.artifacts import read_bundle_manifest, read_index_manifest
    from scalingnote.index import versions
    from scalingnote.paths import data_root
    from scalingnote.runtime.bundle import pick_variant
    from scalingnote.training.render import cpu_model

    args = parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        write_plot(saved, args.render.with_name("latency_vs_throughput.png"))
        update_readme(markdown(saved))
        return
    t0 = time.monotonic()
    work = REPO / ".cache" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    queries = loadgen.read_queries(args.queries or data_root() / loadgen.MSMARCO_QUERIES)
    search_bodies = loadgen.write_bodies(
        work / "search.jsonl", [{"query": q, "k": 10, "mode": args.mode} for q in queries]
    )
    embed_bodies = loadgen.write_bodies(work / "embed.jsonl", [{"model": ".", "input": [q]} for q in queries])
    binary = loadgen.build(work)
    index_dir = versions.current_path(args.index) if versions.is_root(args.index) else args.index
    bundle = read_bundle_manifest(args.bundle)

    def serve(bundle_dir: Path) -> list[str]:
        index = str(args.index.resolve())
        cli = str(Path(sys.executable).with_name("scalingnote"))
        return [cli, "serve", "--bundle", str(bundle_dir.resolve()), "--index", index, "--port", "{port}"]

    passthrough = {k: v for k, v in os.environ.items() if k.startswith("SCALINGNOTE_")}

    def service(name: str, label: str, bundle_dir: Path, hold: float | None, **env: str) -> System:
        return System(
            name, label, serve(bundle_dir), "/search", search_bodies, env=passthrough | env, stages=True, hold_rate=hold
        )

    builders: dict[str, Callable[[], System | str]] = {
        "service": lambda: service("service", f"service, {args.name}", args.bundle, args.hold_rate),
        "a_no_batching": lambda: service(
            "a_no_batching", "(a) service, batching off", args.bundle, None, SCALINGNOTE_MAX_BATCH_SIZE="1"
        ),
        "b_sentence_transformers": lambda: System(
            "b_sentence_transformers",
            "(b) sentence-transformers + FastAPI",
            [
                sys.executable,
                str(HERE / "st_fastapi.py"),
                "--model",
                args.query_model,
                "--index",
                str(args.index.resolve()),
                "--port",
                "{port}",
            ],
            "/search",
            search_bodies,
        ),
        "c_infinity": lambda: infinity_system(args, embed_bodies, work),
        "d_fastapi_route": lambda: service(
            "d_fastapi_route",
            "(d) service, FastAPI route (fast path off)",
            args.bundle,
            None,
            SCALINGNOTE_FAST_PATH="false",
        ),
    }
    for tier in args.tier:
        name, _, spec = tier.partition("=")
        path, _, hold = spec.partition(":")
        builders[f"tier_{name}"] = lambda n=name, p=Path(path), h=hold: service(
            f"tier_{n}", f"service, {n}", p, float(h) if h else None
        )
    results: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(),
        },
        "config": {
            "command": "python bench/serve/run.py " + " ".join(sys.argv[1:]),
            "bundle": str(args.bundle),
            "bundle_name": bundle.name,
            "variant": pick_variant(bundle, os.environ.get("SCALINGNOTE_VARIANT", "auto")),
            "index": str(index_dir),
            "mode": args.mode,
            "index_docs": read_index_manifest(index_dir).count,
            "query_model": args.query_model,
            "queries": len(queries),
            "rates": args.rates,
            "arrivals": args.arrivals,
            "burst": {"size": args.burst_size, "rate": args.burst_rate},
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "closed_duration_s": args.closed_duration,
            "slo_ms": args.slo_ms,
            "service_env": passthrough,
        },
        "systems": {},
    }
    for name in [*args.systems.split(","), *(f"tier_{t.partition('=')[0]}" for t in args.tier)]:
        system = builders[name]()
        if isinstance(system, str):
            print(f"{name}: skipped: {system}", flush=True)
            results["systems"][name] = {"label": name, "skipped": system}
            continue
        print(f"{system.label}", flush=True)
        try:
            running = start(system, work)
        except RuntimeError as exc:
            results["systems"][name] = {"label": system.label, "skipped": str(exc)}
            continue
        try:
            results["systems"][name] = {"label": system.label} | bench_system(running, binary, args, name == "service")
        finally:
            stop(running)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["wall_s"] = round(time.monotonic() - t0, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_plot(results, args.out_dir / "latency_vs_throughput.png")
    section = markdown(results)
    if not args.quick:
        update_readme(section)
    print(section)
    readme = "" if args.quick else f" and {README}"
    print(f"wrote {args.out_dir / 'results.json'}, latency_vs_throughput.png{readme} ({results['wall_s']} s)")


if __name__ == "__main__":
    main()
