"""Encode cost of a batch: one ONNX call padded to its longest query against length groups (not a test; one
process, one thread, bounded).

Random batches of real MS MARCO dev queries at each size; per batch both ways, taking turns, on the same
session: ``BundleEncoder`` with ``length_groups`` (the service's default on a CPU) and its single padded call.
Also the padding each way carries (padded tokens / real tokens).

    python bench/length_groups.py --bundle artifacts/demo/bundle --readme
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
from readme_block import replace_block

HERE = Path(__file__).parent
BLOCK = "length_groups"
MSMARCO_QUERIES = "msmarco-passage-dev-small/queries.tsv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True, help="A transformer bundle.")
    ap.add_argument("--variant", default="auto")
    ap.add_argument("--sizes", default="1,2,4,8,16,32")
    ap.add_argument("--batches", type=int, default=200, help="Random batches per size.")
    ap.add_argument("--readme", action="store_true", help="Write the table into bench/README.md.")
    args = ap.parse_args()
    from scalingnote.beir import load_queries
    from scalingnote.paths import data_root
    from scalingnote.runtime.bundle import CALL_COST_TOKENS, BundleEncoder
    from scalingnote.runtime.tokenization import length_groups
    from scalingnote.training.render import cpu_model

    enc = BundleEncoder(args.bundle, args.variant, threads=1, spin=False)
    if not enc.length_groups:
        raise SystemExit(f"error: {args.bundle} does not encode in length groups here ({enc.manifest.architecture})")
    queries = list(load_queries(data_root() / MSMARCO_QUERIES).values())
    rng = random.Random(0)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        one, grouped, real, padded, split, calls = [], [], 0, 0, 0, 0
        for _ in range(args.batches + 5):
            encodings = enc.tokenize(rng.sample(queries, size))
            lengths = [len(e.ids) for e in encodings]
            t0 = time.perf_counter()
            enc._call(encodings)
            t1 = time.perf_counter()
            enc.run(encodings)
            t2 = time.perf_counter()
            one.append(t1 - t0)
            grouped.append(t2 - t1)
            groups = length_groups(lengths, CALL_COST_TOKENS) if size > 1 else [np.arange(size)]
            real += sum(lengths)
            padded += size * max(lengths)
            split += sum(len(g) * max(lengths[i] for i in g) for g in groups)
            calls += len(groups)
        one_ms, grouped_ms = (float(np.median(t[5:])) * 1000 for t in (one, grouped))  # the first 5 warm up
        rows.append({
            "batch": size, "one_call_ms": round(one_ms, 3), "groups_ms": round(grouped_ms, 3),
            "speedup": round(one_ms / grouped_ms, 2), "calls": round(calls / (args.batches + 5), 2),
            "padding_one_call": round(padded / real, 2), "padding_groups": round(split / real, 2),
        })  # fmt: skip
        print(rows[-1], flush=True)
    meta = {
        "command": f"python bench/length_groups.py --bundle {args.bundle} --sizes {args.sizes} "
        f"--batches {args.batches}" + (" --readme" if args.readme else ""),
        "machine": f"{os.cpu_count()} CPU(s), {cpu_model()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "bundle": enc.manifest.name,
        "variant": enc.variant,
        "call_cost_tokens": CALL_COST_TOKENS,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "length_groups.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    table = [
        "## Length groups: a batch's encode, one padded call vs groups of similar length (`bench/length_groups.py`)",
        "",
        f"`{meta['command']}` — {meta['machine']}, {meta['started']}; bundle `{meta['bundle']}` ({enc.variant}), "
        f"{args.batches} random MS MARCO dev batches per size, 1 thread, both ways on each batch in turn; medians. "
        "Padding: tokens computed / real tokens.",
        "",
        "| batch | one call ms | groups ms | speed-up | calls | padding, one call | padding, groups |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['batch']} | {r['one_call_ms']:.2f} | {r['groups_ms']:.2f} | {r['speedup']:.2f}× | {r['calls']:.1f} "
            f"| {r['padding_one_call']:.2f} | {r['padding_groups']:.2f} |"
            for r in rows
        ),
    ]
    section = "\n".join(table) + "\n"
    if args.readme:
        replace_block(BLOCK, section)
    print(section)


if __name__ == "__main__":
    main()
