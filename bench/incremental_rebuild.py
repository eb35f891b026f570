"""Incremental rebuilds on SciFact: a rebuild after changing 1 % of the documents against full builds.

In one process: a full ``index rebuild`` into a fresh root (empty embedding cache), then ``--repeats``
rounds of changing a seeded 1 % of the documents' texts and rebuilding through the cache, then a full build of
the last changed corpus without the cache (the second full-build time, and the reference index). Checks that the
incremental index equals the full one: the same documents, vectors with cosine >= 0.9999, and the same top-10
for every SciFact test query (encoded once by the doc tower's own query side).

    python bench/incremental_rebuild.py --readme      # bench/results/incremental_rebuild.json + README table
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import faiss
import numpy as np
from readme_block import replace_block

from scalingnote.beir import load_dataset
from scalingnote.index import versions
from scalingnote.index.build import build_index
from scalingnote.modeling.tower import Tower
from scalingnote.paths import data_root
from scalingnote.specs import resolve
from scalingnote.training.render import cpu_model

HERE = Path(__file__).parent
BLOCK = "incremental_rebuild"
T = TypeVar("T")


def change(source: Path, dest: Path, fraction: float, seed: int) -> int:
    """``dest``: ``source``'s corpus with a seeded ``fraction`` of the texts edited; returns how many."""
    rows = [json.loads(line) for line in (source / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    picked = random.Random(seed).sample(range(len(rows)), max(1, round(fraction * len(rows))))
    for i in picked:
        rows[i]["text"] = f"{rows[i]['text']} (revised {seed})"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(picked)


def top10(index: Path, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = faiss.read_index(str(index / "index.faiss"))
    _, rows = flat.search(queries, 10)
    return rows, flat.reconstruct_n(0, flat.ntotal)


def timed(fn: Callable[..., T], *args: object, **kwargs: object) -> tuple[T, float]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def run(args: argparse.Namespace, work: Path) -> dict:
    root, common = work / "root", {"max_length": args.max_length, "progress": False}
    first, full_s = timed(versions.rebuild, root, args.dataset, args.encoder, keep=2, **common)
    rounds, corpus = [], args.dataset
    for r in range(args.repeats):
        corpus = work / f"changed-{r}"
        changed = change(args.dataset, corpus, args.fraction, seed=r + 1)
        manifest, seconds = timed(versions.rebuild, root, corpus, args.encoder, keep=2, **common)
        assert manifest.vectors is not None
        rounds.append({"changed": changed, "seconds": round(seconds, 2), **manifest.vectors.model_dump()})
    reference, full2_s = timed(build_index, corpus, args.encoder, work / "full", **common)
    tower = Tower.from_pretrained(resolve(args.encoder).tower_path("query"))
    texts = list(load_dataset(args.dataset, ("test",)).split_queries("test").values())
    queries = tower.encode(texts, 64)
    got, got_vecs = top10(versions.current_path(root), queries)
    want, want_vecs = top10(work / "full", queries)
    cosine = (got_vecs * want_vecs).sum(1) / np.linalg.norm(got_vecs, axis=1) / np.linalg.norm(want_vecs, axis=1)
    same_docs = (versions.current_path(root) / "docs.json").read_bytes() == (work / "full" / "docs.json").read_bytes()
    full = statistics.median([full_s, full2_s])
    inc = statistics.median(r["seconds"] for r in rounds)
    return {
        "docs": first.count,
        "full_build_s": [round(full_s, 2), round(full2_s, 2)],
        "rounds": rounds,
        "median_full_s": round(full, 2),
        "median_incremental_s": round(inc, 2),
        "ratio": round(inc / full, 4),
        "test_queries": len(texts),
        "identical_top10": int((got == want).all(1).sum()),
        "min_vector_cosine": round(float(cosine.min()), 6),
        "same_docs": same_docs,
        "reference_count": reference.count,
    }


def write_readme(r: dict, meta: dict) -> None:
    lines = [
        "## Incremental rebuild (`bench/incremental_rebuild.py`)",
        "",
        f"`{meta['command']}` — {meta['machine']}, {meta['finished']}. SciFact ({r['docs']} docs), "
        f"`{meta['encoder']}` at {meta['max_length']} tokens, in one process; each round edits a seeded "
        f"{100 * meta['fraction']:g} % of the texts and rebuilds through `ROOT/.embeddings`.",
        "",
        "| build | seconds | embedded | reused |",
        "|---|---|---|---|",
        f"| full (empty cache, then without cache) | {' / '.join(map(str, r['full_build_s']))} | {r['docs']} | 0 |",
    ]
    lines += [
        f"| incremental, round {i + 1} ({x['changed']} changed) | {x['seconds']} | {x['embedded']} | {x['reused']} |"
        for i, x in enumerate(r["rounds"])
    ]
    lines += [
        "",
        f"Median incremental / median full: **{r['ratio']:.1%}** ({r['median_incremental_s']} s / "
        f"{r['median_full_s']} s). Against a full build of the same changed corpus: identical top-10 for "
        f"{r['identical_top10']} of {r['test_queries']} test queries, min vector cosine {r['min_vector_cosine']}, "
        f"same documents: {'yes' if r['same_docs'] else 'no'}.",
    ]
    replace_block(BLOCK, "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=data_root() / "scifact")
    ap.add_argument("--encoder", default="minilm-l6")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "incremental_rebuild.json")
    ap.add_argument("--readme", action="store_true", help="Rewrite this benchmark's table in bench/README.md.")
    args = ap.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="incremental-") as tmp:
        result = run(args, Path(tmp))
    meta = {
        "command": "python bench/incremental_rebuild.py" + (" --readme" if args.readme else ""),
        "machine": f"{cpu_model()}, 2 cores",
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "encoder": args.encoder,
        "max_length": args.max_length,
        "fraction": args.fraction,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "result": result}, indent=2) + "\n")
    if args.readme:
        write_readme(result, meta)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
