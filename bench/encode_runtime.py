"""Encode-only throughput, torch vs ONNX Runtime (``encode_runtime``), of the towers a pipeline indexes with.

For each built-in backbone: SciFact documents at the doc tower's released length (what an index build encodes) and
distillation texts at 64 tokens (what the teacher labels), through ``Tower.encode`` (torch fp32) and
``OnnxTower.encode`` (ONNX Runtime fp32), alternating A B A B on the same texts in one process. Reports the
median texts/s, the ratio, the one-off export seconds and the least cosine between the two runtimes' vectors.

    python bench/encode_runtime.py         # writes bench/results/encode_runtime.json and the README table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from readme_block import replace_block

from scalingnote.beir import load_corpus
from scalingnote.modeling.onnx_tower import OnnxTower
from scalingnote.modeling.tower import Tower
from scalingnote.paths import data_root
from scalingnote.specs import resolve
from scalingnote.training.distill import DistillConfig, distillation_queries

HERE = Path(__file__).parent
BLOCK = "encode_runtime"
HEADING = "## Encode runtime: torch vs ONNX Runtime (`python bench/encode_runtime.py`)"
LABEL_SOURCES = ["train", "titles", "sentences", "msmarco-passage-dev-small/queries.tsv"]
CASES = [  # (backbone, what, max tokens, texts, batch)
    ("minilm-l6", "docs", 256, 512, 16),
    ("minilm-l6", "labels", 64, 2048, 64),
    ("mpnet-base", "docs", 384, 128, 16),
    ("mpnet-base", "labels", 64, 512, 64),
]


def measure(backbone: str, texts: list[str], max_length: int, batch: int, repeats: int) -> dict:
    tower = Tower.from_pretrained(resolve(backbone).path, ident=backbone).eval()
    tower.set_max_length(max_length)
    t0 = time.perf_counter()
    onnx = OnnxTower(tower)
    export_s = time.perf_counter() - t0
    rates: dict[str, list[float]] = {"torch": [], "onnx": []}
    vecs: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, encoder in (("torch", tower), ("onnx", onnx)):
            t0 = time.perf_counter()
            vecs[name] = encoder.encode(texts, batch, "fp32")
            rates[name].append(len(texts) / (time.perf_counter() - t0))
        print(f"{backbone} {max_length}: torch {rates['torch'][-1]:.1f}/s, onnx {rates['onnx'][-1]:.1f}/s", flush=True)
    ratios = [o / t for o, t in zip(rates["onnx"], rates["torch"], strict=True)]
    return {
        "backbone": backbone,
        "texts": len(texts),
        "max_length": max_length,
        "batch_size": batch,
        "mean_tokens": float(np.mean([len(e.ids) for e in tower.tokenize(texts)])),
        "torch_per_s": rates["torch"],
        "onnx_per_s": rates["onnx"],
        "median_torch": statistics.median(rates["torch"]),
        "median_onnx": statistics.median(rates["onnx"]),
        "median_ratio": statistics.median(ratios),
        "export_seconds": export_s,
        "min_cosine": float((vecs["torch"] * vecs["onnx"]).sum(1).min()),
    }


def update_readme(results: list[dict]) -> None:
    rows = [
        "| backbone | texts | tokens (max / mean) | torch fp32 /s | ONNX Runtime fp32 /s | ratio (median) | "
        "export s | least cosine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {r['backbone']} | {r['texts']} {r['what']} | {r['max_length']} / {r['mean_tokens']:.0f} | "
        f"{r['median_torch']:.1f} | {r['median_onnx']:.1f} | {r['median_ratio']:.2f}x | {r['export_seconds']:.1f} | "
        f"{r['min_cosine']:.7f} |"
        for r in results
    ]
    replace_block(BLOCK, "\n".join(rows), heading=HEADING)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=data_root() / "scifact")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "encode_runtime.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    docs = [d.full_text for d in load_corpus(args.dataset / "corpus.jsonl").values()]
    random.Random(0).shuffle(docs)
    labels = distillation_queries(DistillConfig(sources=LABEL_SOURCES, sentences_per_doc=0), args.dataset)
    results = []
    for backbone, what, max_length, n, batch in CASES:
        texts = (docs if what == "docs" else labels)[:n]
        results.append({"what": what} | measure(backbone, texts, max_length, batch, args.repeats))
    payload = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    update_readme(results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
