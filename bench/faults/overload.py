"""Overload: saturation (closed loop); normal load (half of it, Poisson: nothing may be refused); then N x
saturation with Poisson arrivals, then recovery under light load.

Saturation is measured on a server with latency-budget admission off (it would refuse the closed loop's
excess and understate the rate); the overload and recovery run on a fresh server with the given settings.

Figures: status counts (only 200/429/503 may appear), the share of 429s with Retry-After, the admitted
requests' latency (from their arrival time), the server's peak RSS, and how long after the overload a 1-s
window of the light load is back under the SLO.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from common import (
    check,
    loadgen,
    percentiles,
    poisson,
    rss_mib,
    search_bodies,
    serving,
    status_counts,
    workdir,
)

from scalingnote.index.versions import publish_version

ALLOWED = {200, 429, 503}
NORMAL_AVAILABILITY = 0.999  # at half saturation: an availability SLO, Poisson bursts may be refused now and then
NO_ADMISSION = {"queue_budget_ms": 600_000}  # saturation is what the server does when it refuses nothing
RSS_PERIOD_S = 0.1


@contextmanager
def peak_rss(pid: int) -> Iterator[dict[str, float]]:
    """Sample the VmRSS of ``pid`` on a thread while the block runs; the dict gets ``peak_mib``."""
    out = {"peak_mib": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(RSS_PERIOD_S):
            out["peak_mib"] = max(out["peak_mib"], rss_mib(pid)[0])

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join(5)
        out["peak_mib"] = round(max(out["peak_mib"], rss_mib(pid)[0]), 1)


def saturation(binary: Path, port: int, bodies: Path, args: argparse.Namespace) -> dict:
    """Closed-loop throughput after a warm-up: the rate the overload multiplies."""
    loadgen.run(binary, port, bodies, concurrency=8, duration=args.warmup_seconds)
    stats = loadgen.run(
        binary, port, bodies, concurrency=args.saturation_concurrency, duration=args.saturation_seconds
    ).stats()
    return {k: stats[k] for k in ("concurrency", "duration_s", "requests", "failed", "throughput_rps", "latency_ms")}


def overload_figures(run: loadgen.LoadResult, duration: float) -> dict:
    status = run.status
    ok = status == 200
    refused = status == 429
    with_header = int((run.retry_after[refused] >= 1).sum())
    return {
        "requests": len(status),
        "status": status_counts(status),
        "stale_resends": run.summary.get("stale_resends", 0),
        "unexpected_status": sorted({int(s) for s in status} - ALLOWED),
        "retry_after": {
            "429s": int(refused.sum()),
            "with_retry_after": with_header,
            "fraction": round(with_header / int(refused.sum()), 4) if refused.any() else None,
            "values": status_counts(run.retry_after[refused]),
        },
        "admitted": {
            "count": int(ok.sum()),
            "throughput_rps": round(float(ok.sum()) / duration, 1),
            "latency_ms": percentiles(run.latency_ms[ok]),
        },
        "refused_latency_ms": percentiles(run.latency_ms[refused]),
    }


def recovery(run: loadgen.LoadResult, gap_s: float, slo_ms: float) -> dict:
    """Per 1-s window of the light load: requests, non-200s, p99; and when the first window met the SLO."""
    windows, recovered = [], None
    for start in range(int(np.ceil(run.summary["duration_s"]))):
        sel = (run.due_s >= start) & (run.due_s < start + 1)
        if not sel.any():
            continue
        bad = int((run.status[sel] != 200).sum())
        p99 = float(np.percentile(run.latency_ms[sel], 99)) if bad == 0 else None
        end = round(gap_s + start + 1, 2)
        windows.append(
            {"end_s": end, "requests": int(sel.sum()), "non_200": bad, "p99_ms": None if p99 is None else round(p99, 3)}
        )
        if recovered is None and p99 is not None and p99 <= slo_ms:
            recovered = end
    return {"gap_s": round(gap_s, 3), "windows": windows, "recovery_s": recovered}


def run(args: argparse.Namespace, bundle: Path, index: Path) -> dict:
    with workdir("overload") as work:
        root = work / "root"
        publish_version(index, root)
        bodies = search_bodies(work / "search.jsonl", args.queries)
        binary = loadgen.build()
        with serving(bundle, root, work, **(dict(args.overload_setting) | NO_ADMISSION)) as server:
            sat = saturation(binary, server.port, bodies, args)
        rate = round(args.overload_factor * sat["throughput_rps"], 1)
        with serving(bundle, root, work, **dict(args.overload_setting)) as server:
            poisson(binary, server.port, bodies, args.recovery_rate, args.warmup_seconds, 8, seed=3)
            normal_rate = round(args.normal_factor * sat["throughput_rps"], 1)
            normal = poisson(binary, server.port, bodies, normal_rate, args.normal_seconds, 64, seed=4)
            rss_before, _ = rss_mib(server.proc.pid)
            with peak_rss(server.proc.pid) as rss:
                over = poisson(binary, server.port, bodies, rate, args.overload_seconds, args.connections)
                arrivals_ended = time.monotonic() - (over.summary["elapsed_s"] - args.overload_seconds)
                light = poisson(binary, server.port, bodies, args.recovery_rate, args.recovery_seconds, 8, seed=2)
                light_started = time.monotonic() - light.summary["elapsed_s"]
            hwm = rss_mib(server.proc.pid)[1]
    figures = overload_figures(over, args.overload_seconds)
    rec = recovery(light, light_started - arrivals_ended, args.slo_ms)
    result = {
        "settings": dict(args.overload_setting),
        "targets": {"admitted_p99_ms": args.admitted_p99_ms, "recovery_s": args.recovery_target_s},
        "saturation": sat,
        "normal": {
            "rate": normal_rate,
            "duration_s": args.normal_seconds,
            "status": status_counts(normal.status),
            "latency_ms": percentiles(normal.latency_ms[normal.status == 200]),
        },
        "factor": args.overload_factor,
        "offered_rps": rate,
        "duration_s": args.overload_seconds,
        **figures,
        "rss_mib": {"before": round(rss_before, 1), "peak_during_load": rss["peak_mib"], "hwm": round(hwm, 1)},
        "recovery": {"rate": args.recovery_rate, "slo_ms": args.slo_ms, **rec},
    }
    result["checks"] = checks(result, args)
    return result


def checks(r: dict, args: argparse.Namespace) -> list[dict]:
    p99 = r["admitted"]["latency_ms"].get("p99")
    normal = r["normal"]["status"]
    return [
        check(
            f"normal load: >= {100 * NORMAL_AVAILABILITY:g} % answered 200",
            normal.get("200", 0) >= NORMAL_AVAILABILITY * sum(normal.values()),
            normal,
        ),
        check("overload: only 200/429/503", not r["unexpected_status"], r["status"]),
        check("overload: the server refused some requests (429)", r["retry_after"]["429s"] > 0, r["retry_after"]),
        check("overload: every 429 carries Retry-After", r["retry_after"]["fraction"] == 1.0, r["retry_after"]),
        check(
            f"overload: admitted p99 <= {args.admitted_p99_ms:g} ms",
            p99 is not None and p99 <= args.admitted_p99_ms,
            p99,
        ),
        check(
            f"overload: back under {args.slo_ms:g} ms p99 within {args.recovery_target_s:g} s",
            r["recovery"]["recovery_s"] is not None and r["recovery"]["recovery_s"] <= args.recovery_target_s,
            r["recovery"]["recovery_s"],
        ),
    ]


def markdown(r: dict) -> list[str]:
    p, t = r["admitted"]["latency_ms"], r["targets"]
    ra = r["retry_after"]
    share = "–" if ra["fraction"] is None else f"{100 * ra['fraction']:.1f} %"
    codes = ", ".join(f"{c}: {n}" for c, n in r["status"].items())
    return [
        "### Overload",
        "",
        f"Saturation (closed loop, c={r['saturation']['concurrency']}, admission off): "
        f"{r['saturation']['throughput_rps']:.1f} req/s; "
        f"then {r['factor']:g}× = {r['offered_rps']:g} req/s offered for {r['duration_s']:g} s, Poisson arrivals "
        f"(latency from each arrival), then {r['recovery']['rate']:g} req/s. Server settings: "
        f"{', '.join(f'{k}={v}' for k, v in r['settings'].items()) or 'the defaults'}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| normal load, {r['normal']['rate']:g} req/s for {r['normal']['duration_s']:g} s (status: count) | "
        f"{', '.join(f'{c}: {n}' for c, n in r['normal']['status'].items())}; p50 / p99 "
        f"{r['normal']['latency_ms'].get('p50', '–')} / {r['normal']['latency_ms'].get('p99', '–')} ms |",
        f"| overload requests (status: count) | {r['requests']} ({codes}) |",
        f"| resent once after the server closed an idle keep-alive connection | {r['stale_resends']} |",
        f"| 429s with Retry-After | {ra['with_retry_after']} of {ra['429s']} ({share}) |",
        f"| admitted | {r['admitted']['count']} ({r['admitted']['throughput_rps']:.1f} req/s) |",
        f"| admitted p50 / p99 ms (target p99 ≤ {t['admitted_p99_ms']:g}) | {p.get('p50', '–')} / "
        f"{p.get('p99', '–')} |",
        f"| server RSS MiB: before / peak under load | {r['rss_mib']['before']} / {r['rss_mib']['peak_during_load']} |",
        f"| recovery: first 1-s window with p99 ≤ {r['recovery']['slo_ms']:g} ms (target ≤ {t['recovery_s']:g} s) | "
        f"{'never' if r['recovery']['recovery_s'] is None else str(r['recovery']['recovery_s']) + ' s'} |",
        "",
    ]
