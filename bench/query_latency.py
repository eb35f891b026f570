"""Query-encoder latency: teacher vs distilled student, torch vs ONNX fp32 vs ONNX int8, by threads and batch.

Every system encodes the same queries (SciFact test by default), one call per batch, after a warm-up;
torch, ONNX Runtime and FAISS are pinned to the same thread count. Encode only (no search): the search
cost is the same for every student of one teacher and is in the pipeline report.

    python bench/query_latency.py --pipeline artifacts/pipeline-cpu --encoder minilm-l6 --readme
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from readme_block import replace_block

from scalingnote.artifacts import read_bundle_manifest
from scalingnote.beir import load_dataset, load_queries
from scalingnote.paths import data_root
from scalingnote.training.latency import load_timed, time_queries
from scalingnote.training.render import cpu_model

HERE = Path(__file__).parent
BLOCK = "query_latency"


def systems(pipeline: Path | None, encoders: list[str]) -> list[tuple[str, str, str]]:
    """(label, spec, variant) for the pipeline's teacher, students and bundle variants, then ``encoders``."""
    out = []
    if pipeline is not None:
        out += [("teacher query tower", str(pipeline / "teacher"), "fp32")]
        if (pipeline / "teacher-bundle").is_dir():
            out += [("teacher query tower", str(pipeline / "teacher-bundle"), "fp32")]
        for student in sorted(pipeline.glob("student*/")):
            bundle = pipeline / student.name.replace("student", "bundle", 1)
            out.append((student.name, str(student), "fp32"))
            if bundle.is_dir():
                out += [(f"{student.name} bundle", str(bundle), v) for v in read_bundle_manifest(bundle).variants]
    for spec in encoders:
        name, _, variant = spec.partition("@")
        out.append((Path(name).name, name, variant or "fp32"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pipeline", type=Path, help="A pipeline output dir (teacher/, teacher-bundle/, student*/, bundle*/)."
    )
    ap.add_argument("--encoder", action="append", default=[], help="More encoders: SPEC or BUNDLE@variant.")
    ap.add_argument("--queries", type=Path, help="queries.jsonl / qid<TAB>text (default: SciFact test queries).")
    ap.add_argument("--threads", default="1,2", help="Comma-separated thread counts.")
    ap.add_argument("--batch", default="1,32", help="Comma-separated batch sizes.")
    ap.add_argument("--limit", type=int, default=256, help="Queries per measurement.")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "query_latency.json")
    ap.add_argument("--readme", action="store_true", help="Rewrite this benchmark's table in bench/README.md.")
    args = ap.parse_args()

    if args.queries is not None:
        texts = list(load_queries(args.queries).values())
    else:
        texts = list(load_dataset(data_root() / "scifact", ("test",)).split_queries("test").values())
    rows = []
    t0 = time.time()
    for label, spec, variant in systems(args.pipeline, args.encoder):
        for threads in map(int, args.threads.split(",")):
            enc = load_timed(spec, variant, threads=threads)
            for batch in map(int, args.batch.split(",")):
                stats = time_queries(enc.encode, texts[: args.limit], batch_size=batch)
                rows.append({"system": label, "spec": spec, "engine": enc.engine, "params": enc.params} | stats)
                rows[-1] |= {"threads": threads, "batch": batch}
                print(
                    f"{label:24} {enc.engine:12} t={threads} b={batch:<3} p50 {stats['p50_ms']:7.2f} ms  "
                    f"p99 {stats['p99_ms']:7.2f} ms  {stats['qps']:8.1f} q/s",
                    flush=True,
                )
    meta = {
        "machine": f"{os.cpu_count()} CPU(s), {cpu_model()}",
        "load_average": os.getloadavg(),
        "queries": len(texts[: args.limit]),
        "seconds": time.time() - t0,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if args.readme:
        write_readme(rows, meta, args)


def write_readme(rows: list[dict], meta: dict, args: argparse.Namespace) -> None:
    cmd = "python bench/query_latency.py " + " ".join(
        ([f"--pipeline {args.pipeline}"] if args.pipeline else []) + [f"--encoder {e}" for e in args.encoder]
    )
    lines = [
        "## Query encoders: teacher vs student, torch vs ONNX (`bench/query_latency.py`)",
        "",
        f"`{cmd.strip()} --readme` — {meta['machine']}, {meta['finished']}, {meta['queries']} SciFact test queries"
        f" per point, load average at the end {meta['load_average'][0]:.1f} (a shared machine: compare rows"
        " of one run only). Encode only, tokenisation included; one call per batch.",
        "",
        "| system | engine | params | threads | batch | p50 ms | p99 ms | queries/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['system']} | {r['engine']} | {r['params'] / 1e6:.1f} M | {r['threads']} | {r['batch']} | "
        f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['qps']:.0f} |"
        for r in rows
    ]
    replace_block(BLOCK, "\n".join(lines))


if __name__ == "__main__":
    main()
