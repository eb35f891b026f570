"""Server settings of ``scalingnote serve``, each measured against the base in the same run (not a test;
loopback only, bounded).

    .venv/bin/python bench/serve/tune.py --bundle B --index I --base WORKERS=2 --index-variant SQfp16=DIR

Each row is a fresh server process: the base settings (``--base``, as ``SCALINGNOTE_*`` env vars) with one
knob changed, or the same settings over another index (``--index-variant LABEL=DIR``: another FAISS factory
over the same vectors). Each is measured with a closed loop at concurrency 32 (saturation throughput) and an
open loop at ``--rate`` with Poisson arrivals (latency at the target rate), or with ``--burst N`` requests at
once every N/rate seconds. ``--change KEY=VALUE,...`` (repeatable) replaces the default rows. With
``--repeat R`` every row's server is started first and the rows are measured in turn, R rounds (every other
round in reverse order), so that the machine's drift falls on all rows alike; the table gives each row's
medians. Writes tuning.json (tuning-burst.json for a burst run, or ``--out``) and a table in bench/README.md,
in the block named after that file (``serve-tuning``, ``serve-tuning-burst``, ``serve-`` + the ``--out`` stem).

    .venv/bin/python bench/serve/tune.py --bundle B --index I --base WORKERS=2 --burst 30 --rate 300 \
        --change MAX_BATCH_SIZE=1 --change MAX_BATCH_SIZE=8 --change MAX_BATCH_SIZE=16,MAX_WAIT_US=500
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import loadgen
import run

CHANGES: list[dict[str, str]] = [  # the base first; each other row changes one knob of it
    {},
    {"FAST_PATH": "false"},
    {"WORKERS": "1"},
    {"WORKERS": "3"},
    {"MAX_BATCH_SIZE": "1"},
    {"MAX_BATCH_SIZE": "16"},
    {"MAX_WAIT_US": "500"},
    {"GIL_SWITCH_MS": "1"},
    {"ORT_THREADS": "2", "ORT_SPIN": "false"},
]


def label(config: dict[str, str]) -> str:
    return " ".join(f"{k.lower()}={v}" for k, v in config.items()) or "base"


def pairs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if item)


def arrivals(result: dict) -> str:
    """How the open-loop point's requests arrive, for the table."""
    burst = result.get("burst", 1)
    return f"bursts of {burst} at once, {result['rate']:g} req/s on average" if burst > 1 else "Poisson arrivals"


def heading(result: dict) -> str:
    burst = result.get("burst", 1)
    return "### Serving: settings, each against the base in the same run (`bench/serve/tune.py`" + (
        f", bursts of {burst})" if burst > 1 else ")"
    )


def table(result: dict, bundle_name: str) -> str:
    """The README block of one tuning run."""
    rate = f"{result['rate']:g}"
    rounds = result.get("repeat", 1)
    per_point = f"{result['duration_s']:g} s per point"
    if rounds > 1:
        per_point += f", {rounds} interleaved rounds (medians; p99 of each round in the last column)"
    lines = [
        heading(result),
        "",
        f"`{result['command']}` — bundle `{bundle_name}`, {per_point}, {result['started']}. "
        f"Base: {label(result['base'])}; each row changes what it names. Open loop: {arrivals(result)}. c=32 "
        "req/s counts 2xx answers only (admission refuses the rest with 429). Stolen: cores the hypervisor gave to "
        "other guests during the open-loop point; rows with more stolen time had less machine.",
        "",
        f"| settings | c=32 req/s | {rate}/s: req/s | p50 ms | p99 ms | failed | server CPU | stolen (cores) |"
        + (" p99 per round |" if rounds > 1 else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if rounds > 1 else ""),
    ]
    for row in result["configs"]:
        c, o = row["closed_c32"], row[f"open_{rate}"]
        line = (
            f"| {label(row['change'])} | {c['throughput_rps']:.0f} | {o['throughput_rps']:.0f} | "
            f"{o['latency_ms'].get('p50', 0):.2f} | {o['latency_ms'].get('p99', 0):.2f} | {o['failed']} | "
            f"{o['server_cpu_cores']} | {o.get('machine_steal_cores', '–')} |"
        )
        if rounds > 1:
            line += " " + ", ".join(f"{r['latency_ms'].get('p99', 0):.1f}" for r in row["rounds"]) + " |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def median_point(runs: list[dict]) -> dict:
    """One point out of several rounds: the median of each figure the table shows, failures summed."""
    if len(runs) == 1:
        return runs[0]

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    out = dict(runs[0])
    out["throughput_rps"] = med([r["throughput_rps"] for r in runs])
    out["latency_ms"] = {q: med([r["latency_ms"].get(q, 0.0) for r in runs]) for q in runs[0]["latency_ms"]}
    out["failed"] = sum(r["failed"] for r in runs)
    for key in ("server_cpu_cores", "machine_steal_cores"):
        out[key] = med([r.get(key, 0.0) for r in runs])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--index", type=Path, required=True, help="Index dir or root.")
    p.add_argument("--base", type=pairs, default={}, help="Base settings, KEY=VALUE,... (SCALINGNOTE_ prefix off).")
    p.add_argument("--index-variant", action="append", default=[], help="LABEL=DIR: a row over another index.")
    p.add_argument("--mode", choices=run.MODES, default="dense", help=run.MODE_HELP)
    p.add_argument("--rate", type=float, default=300.0)
    p.add_argument("--burst", type=int, default=1, help="Open loop: this many requests at once (1: Poisson).")
    p.add_argument("--change", type=pairs, action="append", help="KEY=VALUE,...: a row (repeatable; default: a set).")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=1, help="Rounds, all servers up and measured in turn (medians).")
    p.add_argument("--out", type=Path, help="Default: tuning.json, or tuning-burst.json with --burst.")
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    burst = args.burst > 1
    out = args.out or run.HERE / ("tuning-burst.json" if burst else "tuning.json")
    load = {"arrivals": "burst", "burst": args.burst} if burst else {"arrivals": "poisson"}
    from scalingnote.artifacts import read_bundle_manifest
    from scalingnote.paths import data_root

    work = run.REPO / ".cache" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    queries = loadgen.read_queries(data_root() / loadgen.MSMARCO_QUERIES)
    bodies = loadgen.write_bodies(work / "search.jsonl", [{"query": q, "k": 10, "mode": args.mode} for q in queries])
    binary = loadgen.build(work)
    serve = [str(Path(sys.executable).with_name("scalingnote")), "serve", "--port", "{port}"]
    rows = []
    t0 = time.monotonic()
    variants = [(change, args.index) for change in ([{}, *args.change] if args.change else CHANGES)]
    variants += [({"index": name}, Path(path)) for name, path in (v.split("=", 1) for v in args.index_variant)]
    systems = []
    for change, index in variants:
        settings = args.base | {k: v for k, v in change.items() if k != "index"}
        env = {f"SCALINGNOTE_{k}": v for k, v in settings.items()}
        env |= {"SCALINGNOTE_BUNDLE": str(args.bundle.resolve()), "SCALINGNOTE_INDEX_ROOT": str(index.resolve())}
        systems.append(
            (change, settings, index, run.System(label(change), label(change), serve, "/search", bodies, env=env))
        )

    def point(running: run.Running) -> tuple[dict, dict]:
        closed = run.measure(running, binary, concurrency=32, duration=args.duration)
        return closed, run.measure(running, binary, rate=args.rate, duration=args.duration, **load)

    measured: list[list[tuple[dict, dict]]] = [[] for _ in systems]
    # one server at a time; with --repeat, all of them up at once, measured in turn
    everyone = list(range(len(systems)))
    groups = [[i] for i in everyone] if args.repeat == 1 else [everyone]
    for group in groups:
        servers: dict[int, run.Running] = {}
        try:
            for i in group:
                print(systems[i][3].label, flush=True)
                servers[i] = run.start(systems[i][3], work)
                loadgen.run(binary, servers[i].port, bodies, concurrency=8, duration=2)
            for round_ in range(args.repeat):
                for i in group if round_ % 2 == 0 else group[::-1]:
                    measured[i].append(point(servers[i]))
        finally:
            for running in servers.values():
                run.stop(running)
    for (change, settings, index, _), points in zip(systems, measured, strict=True):
        closed = median_point([c for c, _ in points])
        fixed = median_point([o for _, o in points])
        row = {"change": change, "settings": settings, "index": str(index), "closed_c32": closed,
               f"open_{args.rate:g}": fixed}  # fmt: skip
        if args.repeat > 1:
            row["rounds"] = [o for _, o in points]
            row["closed_rounds"] = [c for c, _ in points]
        rows.append(row)
    result = {"command": "python bench/serve/tune.py " + " ".join(sys.argv[1:]),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rate": args.rate, "burst": args.burst,
              "repeat": args.repeat,
              "duration_s": args.duration,
              "bundle": str(args.bundle), "base": args.base, "wall_s": round(time.monotonic() - t0, 1),
              "configs": rows}  # fmt: skip
    out.write_text(json.dumps(result, indent=1) + "\n")
    section = table(result, read_bundle_manifest(args.bundle).name)
    run.update_readme(section, f"serve-{out.stem}")  # serve-tuning, serve-tuning-burst, or after --out
    print(section)


if __name__ == "__main__":
    main()
