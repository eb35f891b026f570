"""The static tier against model2vec serving the same weights (not a test; one process, bounded).

model2vec's ``StaticModel`` is the library a user would reach for to serve a static embedding table. It is
given the static bundle's own folded ``[vocab, dim]`` table and tokenizer, so both encode with the same
weights: model2vec averages the table rows of a query's tokens without special tokens and L2-normalises in
NumPy; the bundle runs its ONNX graph (lookup, masked mean over the tokens with [CLS]/[SEP], L2) in ONNX
Runtime. Same SciFact test queries and teacher index for both: nDCG@10, agreement with the bundle, and encode
latency at batch 1 on one thread, alternating the two systems query by query.

    python bench/static_model2vec.py --bundle artifacts/demo/bundle-static --index artifacts/demo/teacher-index --readme
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from readme_block import replace_block

HERE = Path(__file__).parent
BLOCK = "static_model2vec"


def folded_table(bundle: Path) -> np.ndarray:
    """The static graph's one ``[vocab, dim]`` initializer: the table the export folded."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / "model.onnx"))
    tables = [numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) == 2]
    if len(tables) != 1:
        raise SystemExit(f"error: {bundle} is not a static bundle (expected one 2-D initializer, got {len(tables)})")
    return tables[0].astype(np.float32)


def alternate(fns: dict[str, object], texts: list[str], warmup: int = 20) -> dict[str, dict[str, float]]:
    """Per system, median and p99 ms of one call per query, the systems taking turns on each query."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i, text in enumerate(texts):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn([text])  # type: ignore[operator]
            if i >= warmup:
                times[name].append((time.perf_counter() - started) * 1000)
    return {
        name: {"p50_ms": round(float(np.median(t)), 4), "p99_ms": round(float(np.percentile(t, 99)), 4)}
        for name, t in times.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True, help="A static bundle (architecture 'static').")
    ap.add_argument("--index", type=Path, required=True, help="The teacher's index the bundle queries.")
    ap.add_argument("--dataset", type=Path, default=None, help="BEIR dataset (default: shared SciFact).")
    ap.add_argument("--readme", action="store_true", help="Write the table into bench/README.md.")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    from scalingnote.artifacts import read_bundle_manifest
    from scalingnote.beir import load_dataset
    from scalingnote.evaluation.metrics import evaluate, overlap_at_k
    from scalingnote.index.store import LoadedIndex
    from scalingnote.paths import data_root
    from scalingnote.runtime.bundle import BundleEncoder
    from scalingnote.training.render import cpu_model

    manifest = read_bundle_manifest(args.bundle)
    if manifest.architecture != "static":
        raise SystemExit(f"error: {args.bundle} is a {manifest.architecture!r} bundle, not a static one")
    dataset = load_dataset(args.dataset or data_root() / "scifact", ("test",))
    queries = dataset.split_queries("test")
    qids, texts = list(queries), list(queries.values())
    ours = BundleEncoder(args.bundle, "fp32", threads=1)
    theirs = StaticModel(
        folded_table(args.bundle), Tokenizer.from_file(str(args.bundle / "tokenizer.json")), normalize=True
    )
    index = LoadedIndex.load(args.index)

    def m2v(batch: list[str]) -> np.ndarray:
        return np.atleast_2d(theirs.encode(batch, use_multiprocessing=False)).astype(np.float32)

    vectors = {"scalingnote bundle (ONNX Runtime)": ours.encode(texts), "model2vec StaticModel": m2v(texts)}
    rows: dict[str, dict] = {}
    top = {}
    for name, vecs in vectors.items():
        hits = index.hits(vecs, 100)
        run = {qid: {h.id: h.score for h in row} for qid, row in zip(qids, hits, strict=True)}
        top[name] = np.array([[h.id for h in row[:10]] for row in hits])
        rows[name] = {"ndcg@10": round(evaluate(dataset.qrels["test"], run)["ndcg@10"], 4)}
    names = list(vectors)
    agreement = {
        "min_cosine": round(float((vectors[names[0]] * vectors[names[1]]).sum(1).min()), 4),
        "mean_cosine": round(float((vectors[names[0]] * vectors[names[1]]).sum(1).mean()), 4),
        "top10_overlap": round(overlap_at_k(top[names[0]], top[names[1]]), 4),
    }
    latency = alternate({names[0]: ours.encode, names[1]: m2v}, texts)
    for name in names:
        rows[name] |= latency[name]
    meta = {
        "command": "python bench/static_model2vec.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False, True)),
        "machine": f"{os.cpu_count()} CPU(s), {cpu_model()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "bundle": manifest.name,
        "queries": len(texts),
    }
    result = {"meta": meta, "systems": rows, "agreement": agreement}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "static_model2vec.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "## Static tier: our bundle vs model2vec on the same table (`bench/static_model2vec.py`)",
        "",
        f"`{meta['command']}` — {meta['machine']}, {meta['started']}; bundle `{manifest.name}`, "
        f"{len(texts)} SciFact test queries; latency: encode only, batch 1, 1 thread, the two taking turns.",
        "",
        "| system | nDCG@10 | encode p50 ms | encode p99 ms |",
        "|---|---|---|---|",
        *(f"| {n} | {r['ndcg@10']:.4f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |" for n, r in rows.items()),
        "",
        f"Agreement: cosine min {agreement['min_cosine']}, mean {agreement['mean_cosine']}; top-10 overlap "
        f"{agreement['top10_overlap']:.1%} (model2vec leaves out [CLS]/[SEP], which the bundle averages in).",
    ]
    section = "\n".join(lines) + "\n"
    if args.readme:
        replace_block(BLOCK, section)
    print(section)


if __name__ == "__main__":
    main()
