"""Dense, BM25 and hybrid retrieval of one served index, side by side (not a test; one process, bounded).

The bundle encodes the SciFact test queries once; each mode then searches the index as ``/search`` does
(``LoadedIndex.query``, one query at a time, 1 FAISS thread): nDCG@10, Recall@100 and MRR@10, and the search
time per query (encode excluded: it is the same for every mode), the modes taking turns on each query. An id
allow-list filter (a seeded random 20% of the corpus) shows what a filter costs.

    python bench/hybrid.py --bundle artifacts/demo/bundle --index artifacts/demo/teacher-index --readme
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
BLOCK = "hybrid"
BATCH = 16  # a batcher with SCALINGNOTE_MAX_BATCH_SIZE=16 (the default is 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True, help="The served query bundle.")
    ap.add_argument("--index", type=Path, required=True, help="Its index (with BM25: built with --bm25).")
    ap.add_argument("--dataset", type=Path, default=None, help="BEIR dataset (default: shared SciFact).")
    ap.add_argument("--readme", action="store_true", help="Write the table into bench/README.md.")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import faiss

    from scalingnote.beir import load_dataset
    from scalingnote.evaluation.metrics import evaluate
    from scalingnote.index.docstore import Filter
    from scalingnote.index.lexical import Lexical
    from scalingnote.index.query import SearchSpec
    from scalingnote.index.store import LoadedIndex
    from scalingnote.paths import data_root
    from scalingnote.runtime.bundle import BundleEncoder
    from scalingnote.training.render import cpu_model

    faiss.omp_set_num_threads(1)
    dataset = load_dataset(args.dataset or data_root() / "scifact", ("test",))
    queries = dataset.split_queries("test")
    qids, texts = list(queries), list(queries.values())
    encoder = BundleEncoder(args.bundle, "auto", threads=1)
    index = LoadedIndex.load(args.index)
    bm25_note = "the index's own"
    if index.lexical is None:
        bm25_note = "built over the corpus (the index has none)"
        index.lexical = Lexical.build([dataset.corpus[i].full_text for i in index.ids])
    vectors = encoder.encode(texts)
    allowed = random.Random(0).sample(index.ids, len(index.ids) // 5)
    flt = Filter(ids=allowed)
    systems = {
        "dense (FAISS)": SearchSpec(100, "dense"),
        "BM25": SearchSpec(100, "bm25"),
        "hybrid, RRF (the default)": SearchSpec(100, "hybrid"),
        "hybrid, convex, weight 0.5": SearchSpec(100, "hybrid", weight=0.5),
        "dense, 20% id allow-list": SearchSpec(100, "dense", flt),
        "hybrid, 20% id allow-list": SearchSpec(100, "hybrid", flt),
    }
    runs: dict[str, dict] = {name: {} for name in systems}
    times: dict[str, list[float]] = {name: [] for name in systems}
    for i, (qid, text) in enumerate(zip(qids, texts, strict=True)):
        for name, spec in systems.items():
            started = time.perf_counter()
            (hits,) = index.query(vectors[i : i + 1], [text], [spec])
            times[name].append((time.perf_counter() - started) * 1000)
            runs[name][qid] = {h.id: h.score for h in hits}
    batched = {"dense (FAISS), batches of 16": SearchSpec(100, "dense"), "hybrid, RRF, batches of 16": SearchSpec(100)}
    for name, spec in batched.items():  # as the batcher hands the index a batch: one shared FAISS search
        runs[name], times[name] = {}, []
        for start in range(0, len(texts), BATCH):
            rows = slice(start, start + BATCH)
            started = time.perf_counter()
            found = index.query(vectors[rows], texts[rows], [spec] * len(texts[rows]))
            times[name].append((time.perf_counter() - started) * 1000 / len(found))
            runs[name] |= {qid: {h.id: h.score for h in hits} for qid, hits in zip(qids[rows], found, strict=True)}
    systems |= batched
    rows = {}
    for name, spec in systems.items():
        metrics = {} if spec.filter else evaluate(dataset.qrels["test"], runs[name])
        rows[name] = {k: round(v, 4) for k, v in metrics.items()} | {
            "search_p50_ms": round(float(np.median(times[name])), 3),
            "search_p99_ms": round(float(np.percentile(times[name], 99)), 3),
        }
    meta = {
        "command": "python bench/hybrid.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False, True)),
        "machine": f"{os.cpu_count()} CPU(s), {cpu_model()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "bundle": encoder.manifest.name,
        "variant": encoder.variant,
        "docs": index.manifest.count,
        "queries": len(texts),
        "bm25": bm25_note,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "hybrid.json").write_text(json.dumps({"meta": meta, "systems": rows}, indent=1) + "\n")
    lines = [
        "## Hybrid retrieval: dense, BM25 and fused on the served index (`bench/hybrid.py`)",
        "",
        f"`{meta['command']}` — {meta['machine']}, {meta['started']}; bundle `{meta['bundle']}` "
        f"({meta['variant']}), {meta['docs']} docs, {len(texts)} SciFact test queries, BM25 {bm25_note}. Search "
        "time per query as `/search` runs it (encode excluded; 1 thread; the systems take turns on each query); the "
        f"batched rows give the time per query of one call for {BATCH} queries (their p99 is over calls).",
        "",
        "| system | nDCG@10 | Recall@100 | MRR@10 | search p50 ms | search p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        quality = [f"{r[m]:.4f}" if m in r else "-" for m in ("ndcg@10", "recall@100", "mrr@10")]
        lines.append(f"| {name} | {' | '.join(quality)} | {r['search_p50_ms']:.3f} | {r['search_p99_ms']:.3f} |")
    section = "\n".join(lines) + "\n"
    if args.readme:
        replace_block(BLOCK, section)
    print(section)


if __name__ == "__main__":
    main()
