"""Fault figures of the /search service (issue #10): overload, chaos, corrupt artifacts, fuzzing.

    .venv/bin/python bench/faults/run.py --bundle artifacts/demo/bundle --index artifacts/demo/teacher-index \\
        --other-index artifacts/fb/mpnet-sub200-index --json bench/results/faults.json --readme

``--other-index`` is any index of another doc tower (the wrong-space case); the one above is mpnet-base over the
first 200 SciFact documents: ``scalingnote index build --dataset <those docs> --doc-encoder mpnet-base
--max-length 128 --out artifacts/fb/mpnet-sub200-index`` (the subset as :func:`chaos.write_subset` writes it).

Every server is a real ``scalingnote serve`` process on 127.0.0.1 (a free port), on copies of the given
artifacts in temporary directories; every load, wait and subprocess is bounded and cleaned up. Writes every
figure, pass/fail checks, machine info and a timestamp to ``--json``; ``--readme`` rewrites the block between
``<!-- faults:begin -->`` and ``<!-- faults:end -->`` in bench/README.md. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import chaos
import corrupt
import fuzz
import overload
from common import REPO

sys.path.insert(0, str(REPO / "bench"))  # the README block writer
from readme_block import replace_block

from scalingnote.artifacts import read_bundle_manifest, read_index_manifest
from scalingnote.index import versions
from scalingnote.paths import data_root
from scalingnote.training.render import cpu_model

BLOCK = "faults"
SCENARIOS = {"overload": overload, "chaos": chaos, "corrupt": corrupt, "fuzz": fuzz}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
        def parse(text: str) -> list[str]:
            items = [s.strip() for s in text.split(",") if s.strip()]
            if unknown := [s for s in items if s not in allowed]:
                raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(allowed)}")
            return items

        return parse

    def setting(text: str) -> tuple[str, str]:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError("expected NAME=VALUE (a SCALINGNOTE_ setting without the prefix)")
        return name.lower().removeprefix("scalingnote_"), value

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="Model bundle (read only; copies are corrupted).")
    p.add_argument("--index", type=Path, required=True, help="Index dir (or root: its current version) of the bundle.")
    p.add_argument("--only", type=names(tuple(SCENARIOS)), default=list(SCENARIOS), help="Comma-separated scenarios.")
    p.add_argument("--json", type=Path, default=None, help="Write the results here.")
    p.add_argument("--readme", action="store_true", help="Rewrite the faults block of bench/README.md.")
    p.add_argument("--queries", type=Path, default=None, help="Load queries (default: MS MARCO dev-small).")
    g = p.add_argument_group("overload")
    g.add_argument("--overload-seconds", type=float, default=60.0)
    g.add_argument("--overload-factor", type=float, default=3.0, help="Offered rate = factor x saturation.")
    g.add_argument("--saturation-seconds", type=float, default=10.0)
    g.add_argument("--saturation-concurrency", type=int, default=16)
    g.add_argument("--warmup-seconds", type=float, default=3.0)
    g.add_argument("--connections", type=int, default=256, help="Keep-alive connections of the overload.")
    g.add_argument("--normal-factor", type=float, default=0.5, help="Normal load = factor x saturation (no 429s).")
    g.add_argument("--normal-seconds", type=float, default=30.0)
    g.add_argument("--recovery-rate", type=float, default=20.0)
    g.add_argument("--recovery-seconds", type=float, default=15.0)
    g.add_argument("--slo-ms", type=float, default=10.0, help="p99 a 1-s recovery window must meet.")
    g.add_argument("--admitted-p99-ms", type=float, default=50.0, help="Target p99 of admitted requests.")
    g.add_argument("--recovery-target-s", type=float, default=5.0)
    g.add_argument(
        "--overload-setting",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="A service setting for the overload's server, e.g. queue_budget_ms=40 (repeatable; default: defaults).",
    )
    g = p.add_argument_group("chaos")
    g.add_argument("--chaos-steps", type=names(chaos.STEPS), default=list(chaos.STEPS))
    g.add_argument("--chaos-docs", type=int, default=200, help="SciFact docs per rebuild.")
    g.add_argument("--chaos-dataset", type=Path, default=data_root() / "scifact")
    g.add_argument("--doc-encoder", default=None, help="Doc encoder of --index (default: a dual tower beside it).")
    g.add_argument("--chaos-rate", type=float, default=100.0)
    g.add_argument("--chaos-attempts", type=int, default=4, help="Runs per step until one is killed in it.")
    g.add_argument("--chaos-timeout", type=float, default=600.0, help="Longest a rebuild may run.")
    g.add_argument("--chaos-poll-seconds", type=float, default=0.5, help="The server's RELOAD_POLL_SECONDS.")
    g = p.add_argument_group("corrupt")
    g.add_argument("--other-index", type=Path, default=None, help="An index built by another doc encoder.")
    g = p.add_argument_group("fuzz")
    g.add_argument("--fuzz-cases", type=int, default=1000, help="Generated cases, over all operations.")
    return p.parse_args(argv)


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }


def markdown(results: dict) -> str:
    cfg, m = results["config"], results["machine"]
    failed = [c["name"] for c in results["checks"] if not c["passed"]]
    lines = [
        "## Fault figures (`bench/faults`)",
        "",
        f"`{cfg['command']}` — {m['cpu']}, {m['cores']} cores, {results['started']}, "
        f"{results['wall_s'] / 60:.0f} min. Bundle `{cfg['bundle_name']}`, index {cfg['index_docs']} docs. "
        f"Checks: {len(results['checks']) - len(failed)} of {len(results['checks'])} passed"
        + (f"; failed: {'; '.join(failed)}." if failed else "."),
        "",
    ]
    for name in SCENARIOS:
        if name in results["scenarios"]:
            lines += SCENARIOS[name].markdown(results["scenarios"][name])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = args.bundle.resolve()
    index = (versions.current_path(args.index) if versions.is_root(args.index) else args.index).resolve()
    started = time.monotonic()
    results: dict = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": machine(),
        "config": {
            "command": "python bench/faults/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "bundle_name": read_bundle_manifest(bundle).name,
            "index_version": read_index_manifest(index).version,
            "index_docs": read_index_manifest(index).count,
        },
        "scenarios": {},
    }
    for name in args.only:
        print(f"{name} …", flush=True)
        t0 = time.monotonic()
        results["scenarios"][name] = SCENARIOS[name].run(args, bundle, index) | {
            "wall_s": round(time.monotonic() - t0, 1)
        }
    results["checks"] = [c for r in results["scenarios"].values() for c in r["checks"]]
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["wall_s"] = round(time.monotonic() - started, 1)
    section = markdown(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.readme:
        replace_block(BLOCK, section)
    print(section)
    for c in results["checks"]:
        print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}" + ("" if c["passed"] else f": {c['value']}"))
    return 0 if all(c["passed"] for c in results["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
