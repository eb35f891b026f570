"""Thread and batching settings of ``scalingnote serve``, measured (not a test; loopback only, bounded).

    .venv/bin/python bench/serve/tune.py                  # about 6 min on 2 cores

Each configuration is a fresh server process (settings as ``SCALINGNOTE_*`` env vars) measured with a
closed loop at concurrency 32 (saturation throughput) and an open loop at ``--rate`` (latency at the target
rate). ``workers=2`` runs ``uvicorn --factory --workers 2`` (two processes, each with its own batcher).
Writes tuning.json and a table in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import loadgen
import run

CONFIGS: list[dict[str, str]] = [  # the first is the default; each other row changes one or two knobs
    {"ORT_THREADS": "1", "FAISS_THREADS": "1", "MAX_BATCH_SIZE": "4"},
    {"ORT_THREADS": "2", "ORT_SPIN": "false"},
    {"ORT_THREADS": "2", "ORT_SPIN": "true"},
    {"ORT_THREADS": "2", "FAISS_THREADS": "2"},
    {"MAX_WAIT_US": "500"},
    {"MAX_WAIT_US": "2000"},
    {"MAX_BATCH_SIZE": "1"},
    {"MAX_BATCH_SIZE": "8"},
    {"MAX_BATCH_SIZE": "32"},
    {"GIL_SWITCH_MS": "1"},
    {"workers": "2"},
]


def label(config: dict[str, str]) -> str:
    return " ".join(f"{k.lower()}={v}" for k, v in config.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=run.REPO / "artifacts" / "bundle-minilm")
    p.add_argument("--index", type=Path, default=run.REPO / "artifacts" / "minilm-scifact")
    p.add_argument("--rate", type=float, default=300.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=run.HERE / "tuning.json")
    args = p.parse_args()
    from scalingnote.artifacts import read_bundle_manifest
    from scalingnote.paths import data_root

    work = run.REPO / ".cache" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    queries = loadgen.read_queries(data_root() / loadgen.MSMARCO_QUERIES)
    bodies = loadgen.write_bodies(work / "search.jsonl", [{"query": q, "k": 10} for q in queries])
    binary = loadgen.build(work)
    bin_dir = Path(sys.executable).parent
    rows = []
    t0 = time.monotonic()
    for config in CONFIGS:
        env = {f"SCALINGNOTE_{k}": v for k, v in config.items() if k != "workers"}
        env |= {"SCALINGNOTE_BUNDLE": str(args.bundle.resolve()), "SCALINGNOTE_INDEX_ROOT": str(args.index.resolve())}
        if "workers" in config:
            cmd = [str(bin_dir / "uvicorn"), "service.app:create_app", "--factory", "--workers", config["workers"],
                   "--host", "127.0.0.1", "--port", "{port}", "--no-access-log"]  # fmt: skip
        else:
            cmd = [str(bin_dir / "scalingnote"), "serve", "--port", "{port}"]
        system = run.System(config.get("workers", "1"), label(config), cmd, "/search", bodies, env=env)
        print(system.label, flush=True)
        running = run.start(system, work)
        try:
            loadgen.run(binary, running.port, bodies, concurrency=8, duration=2)
            closed = run.measure(running, binary, concurrency=32, duration=args.duration)
            fixed = run.measure(running, binary, rate=args.rate, duration=args.duration)
        finally:
            run.stop(running)
        rows.append({"config": config, "closed_c32": closed, f"open_{args.rate:g}": fixed})
    result = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rate": args.rate, "duration_s": args.duration,
              "bundle": str(args.bundle), "wall_s": round(time.monotonic() - t0, 1), "configs": rows}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "### Serving: thread and batching settings (`bench/serve/tune.py`)",
        "",
        f"Bundle `{read_bundle_manifest(args.bundle).name}`, {args.duration:g} s per point, {result['started']}; "
        "settings not named in a row are the defaults (first row). Load average: the machine's, during the row.",
        "",
        f"| settings | c=32 req/s | c=32 p99 ms | {args.rate:g}/s p50 ms | {args.rate:g}/s p99 ms | "
        f"{args.rate:g}/s failed | server CPU @ {args.rate:g}/s | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c, o = row["closed_c32"], row[f"open_{args.rate:g}"]
        lines.append(
            f"| {label(row['config'])} | {c['throughput_rps']:.0f} | {c['latency_ms'].get('p99', 0):.1f} | "
            f"{o['latency_ms'].get('p50', 0):.2f} | {o['latency_ms'].get('p99', 0):.2f} | {o['failed']} | "
            f"{o['server_cpu_cores']} | {o['loadavg_1m']} |"
        )
    section = "\n".join(lines) + "\n"
    run.update_readme(section, run.TUNE_BLOCK)
    print(section)


if __name__ == "__main__":
    main()
