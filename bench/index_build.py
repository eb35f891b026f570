"""Index-build throughput (docs/s) on SciFact: scalingnote's build vs a naive transformers loop.

scalingnote: ``index.build.build_index`` (length-sorted batches, bf16 autocast for LLMs, resumable shards,
FAISS Flat). Baseline: a plain transformers loop, batch 32, corpus order (no length sorting), fp32, same
pooling, then FAISS Flat. Both run in the same process, alternating A B A B, on the same document sample.

    python bench/index_build.py            # writes bench/results/index_build.json and the README table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from readme_block import replace_block
from transformers import AutoModel, AutoTokenizer

from scalingnote.beir import Document, load_corpus
from scalingnote.index.build import build_index
from scalingnote.modeling.pooling import pool
from scalingnote.modeling.tower import Tower
from scalingnote.paths import data_root
from scalingnote.specs import resolve

HERE = Path(__file__).parent
BLOCK = "index_build"


def write_subset(docs: list[Document], root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
    return root


def naive_build(model: str, docs: list[Document], max_length: int, pooling: str) -> None:
    """The baseline: plain transformers, batch 32, corpus order, fp32."""
    path = resolve(model).path
    tok = AutoTokenizer.from_pretrained(path)
    net = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    suffix = tok.eos_token if pooling == "last-token" else ""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    vectors = []
    with torch.inference_mode():
        for start in range(0, len(docs), 32):
            texts = [d.full_text + suffix for d in docs[start : start + 32]]
            batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = net(**batch).last_hidden_state
            vectors.append(F.normalize(pool(hidden, batch["attention_mask"], pooling), dim=-1).numpy())
    index = faiss.IndexFlatIP(vectors[0].shape[1])
    index.add(np.concatenate(vectors))


def measure(model: str, docs: list[Document], max_length: int, batch_size: int, repeats: int, work: Path) -> dict:
    subset = write_subset(docs, work / f"{model}-data")
    pooling = "last-token" if model.startswith("smollm2") else "mean"
    ours, base = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        build_index(
            subset, model, work / f"{model}-idx-{r}", batch_size=batch_size, progress=False, max_length=max_length
        )
        ours.append(len(docs) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        naive_build(model, docs, max_length, pooling)
        base.append(len(docs) / (time.perf_counter() - t0))
        print(f"{model} run {r + 1}: scalingnote {ours[-1]:.1f} docs/s, naive {base[-1]:.1f} docs/s", flush=True)
    ratios = [a / b for a, b in zip(ours, base, strict=True)]
    return {
        "model": model,
        "docs": len(docs),
        "max_length": max_length,
        "batch_size": batch_size,
        "scalingnote_docs_per_s": ours,
        "naive_docs_per_s": base,
        "median_scalingnote": statistics.median(ours),
        "median_naive": statistics.median(base),
        "median_ratio": statistics.median(ratios),
    }


def measure_dtypes(model: str, docs: list[Document], max_length: int, batch_size: int) -> dict:
    """Tower.encode throughput in fp32 and bf16 autocast (what ``--dtype auto`` picks is justified here)."""
    tower = Tower.from_pretrained(resolve(model).path, ident=model)
    tower.set_max_length(max_length)
    texts = [d.full_text for d in docs]
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(2):
        for dtype in rates:
            t0 = time.perf_counter()
            tower.encode(texts, batch_size, dtype=dtype, progress=False)  # type: ignore[arg-type]
            rates[dtype].append(len(texts) / (time.perf_counter() - t0))
    return {
        "model": model,
        "docs": len(texts),
        "fp32_docs_per_s": rates["fp32"],
        "bf16_docs_per_s": rates["bf16"],
        "bf16_over_fp32": statistics.median(rates["bf16"]) / statistics.median(rates["fp32"]),
        "auto_picks": "bf16" if tower.resolve_dtype("auto") == torch.bfloat16 else "fp32",
    }


def update_readme(results: list[dict], dtypes: list[dict]) -> None:
    rows = [
        "| model | docs | max len | scalingnote docs/s | naive docs/s | ratio (median) |",
        "|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {r['model']} | {r['docs']} | {r['max_length']} | {r['median_scalingnote']:.1f} | "
        f"{r['median_naive']:.1f} | {r['median_ratio']:.2f}x |"
        for r in results
    ]
    rows += [
        "",
        "| model | docs (encode only) | fp32 docs/s | bf16 docs/s | bf16/fp32 | auto picks |",
        "|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {d['model']} | {d['docs']} | {statistics.median(d['fp32_docs_per_s']):.1f} | "
        f"{statistics.median(d['bf16_docs_per_s']):.1f} | {d['bf16_over_fp32']:.2f}x | {d['auto_picks']} |"
        for d in dtypes
    ]
    replace_block(BLOCK, "\n".join(rows), heading="## Index build throughput (`python bench/index_build.py`)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=data_root() / "scifact")
    ap.add_argument("--minilm-docs", type=int, default=1024)
    ap.add_argument("--smollm2-docs", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "index_build.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    corpus = list(load_corpus(args.dataset / "corpus.jsonl").values())
    random.Random(0).shuffle(corpus)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(measure("minilm-l6", corpus[: args.minilm_docs], 256, 64, args.repeats, Path(tmp)))
        results.append(measure("smollm2-135m", corpus[: args.smollm2_docs], 256, 32, args.repeats, Path(tmp)))
    dtypes = [measure_dtypes("minilm-l6", corpus[:256], 256, 64), measure_dtypes("smollm2-135m", corpus[:64], 256, 32)]
    payload = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "results": results,
        "dtype": dtypes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    update_readme(results, dtypes)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
