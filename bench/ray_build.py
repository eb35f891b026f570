"""Index-build throughput on Ray Data (1 and 2 doc-tower actors) against the in-process build, same run.

A SciFact slice (``--docs``) is built with ``index.build.build_index``: in process (``--engine local``), on a
local Ray with one actor of 2 CPUs, and with two actors of 1 CPU, alternating A B C per repeat, each from an
empty cache (nothing reused). Ray is started once before the runs (its start-up is reported separately); each
Ray build includes its actors' start-up (loading the doc tower), as every rebuild job pays it. The Ray builds'
vectors are checked against the in-process ones (min cosine).

    flock /tmp/bench.lock python bench/ray_build.py --readme
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from index_build import write_subset
from readme_block import replace_block

from scalingnote.beir import load_corpus
from scalingnote.index.build import build_index
from scalingnote.index.ray_build import RayOptions, connect
from scalingnote.paths import data_root
from scalingnote.training.render import cpu_model

HERE = Path(__file__).parent
BLOCK = "ray_build"
ENGINES = {
    "in process (2 torch threads)": None,
    "Ray, 1 actor x 2 CPUs": RayOptions(actors=1, cpus_per_actor=2),
    "Ray, 2 actors x 1 CPU": RayOptions(actors=2, cpus_per_actor=1),
}


def vectors(index: Path) -> np.ndarray:
    flat = faiss.read_index(str(index / "index.faiss"))
    return flat.reconstruct_n(0, flat.ntotal)


def run(model: str, n_docs: int, max_length: int, repeats: int, work: Path) -> dict:
    docs = list(load_corpus(data_root() / "scifact" / "corpus.jsonl").values())[:n_docs]
    subset = write_subset(docs, work / "data")
    t0 = time.perf_counter()
    connect(RayOptions())
    startup = time.perf_counter() - t0
    rates: dict[str, list[float]] = {name: [] for name in ENGINES}
    cosines: dict[str, float] = {}
    for r in range(repeats):
        for name, options in ENGINES.items():
            out = work / f"{r}-{len(rates[name])}-{options is not None}-{options and options.actors}"
            t0 = time.perf_counter()
            build_index(subset, model, out, max_length=max_length, progress=False, ray=options)
            rates[name].append(len(docs) / (time.perf_counter() - t0))
            print(f"run {r + 1} {name}: {rates[name][-1]:.1f} docs/s", flush=True)
            if options is None:
                reference = vectors(out)
            else:
                cos = float((vectors(out) * reference).sum(axis=1).min())
                cosines[name] = min(cosines.get(name, 1.0), cos)
    base = statistics.median(rates["in process (2 torch threads)"])
    rows = [
        {
            "engine": name,
            "docs_per_s": values,
            "median_docs_per_s": statistics.median(values),
            "vs_in_process": statistics.median(values) / base,
            "min_cosine_vs_in_process": cosines.get(name),
        }
        for name, values in rates.items()
    ]
    return {"docs": len(docs), "ray_start_s": round(startup, 1), "rows": rows}


def write_readme(result: dict, meta: dict) -> None:
    lines = [
        "## Index build on Ray Data vs in process (`bench/ray_build.py`)",
        "",
        f"`{meta['command']}` — {meta['machine']}, {meta['finished']}: {result['docs']} SciFact documents, "
        f"`{meta['model']}` at {meta['max_length']} tokens, FAISS Flat, {meta['repeats']} alternating repeats from "
        f"an empty cache. A local Ray started once in {result['ray_start_s']} s (not in the rates); each Ray build "
        "includes starting its actors (loading the doc tower).",
        "",
        "| engine | docs/s (median) | vs in process | min cosine vs in process |",
        "|---|---|---|---|",
    ]
    for r in result["rows"]:
        cos = "–" if r["min_cosine_vs_in_process"] is None else f"{r['min_cosine_vs_in_process']:.6f}"
        lines.append(f"| {r['engine']} | {r['median_docs_per_s']:.1f} | {r['vs_in_process']:.2f}x | {cos} |")
    replace_block(BLOCK, "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "ray_build.json")
    ap.add_argument("--readme", action="store_true", help="Rewrite this benchmark's table in bench/README.md.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.model, args.docs, args.max_length, args.repeats, Path(tmp))
    meta = {
        "command": " ".join(["python", "bench/ray_build.py", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPU(s), {cpu_model()}",
        "model": args.model,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "load_average": os.getloadavg(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    args.json.write_text(json.dumps({"meta": meta, **result}, indent=2) + "\n")
    if args.readme:
        write_readme(result, meta)


if __name__ == "__main__":
    main()
