"""Dense retrieval for eval: encode queries (torch tower or ONNX bundle), search a FAISS index."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from evaluation.metrics import Run
from index.store import LoadedIndex
from scalingnote.artifacts import check_space, read_index_manifest
from scalingnote.encoders import EncoderRef, query_space, resolve


class QueryEncoder(Protocol):
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


class _TowerQueries:
    """Adapter: the query side of a torch tower."""

    def __init__(self, ref: EncoderRef):
        from modeling.tower import Tower

        self.tower = Tower.from_pretrained(ref.tower_path("query"), ident=ref.id)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.tower.encode(texts, batch_size, progress=False)


def load_query_encoder(ref: EncoderRef, variant: str = "auto") -> QueryEncoder:
    if ref.kind == "bundle":
        from scalingnote.bundle import BundleEncoder

        return BundleEncoder(ref.path, variant=variant)
    return _TowerQueries(ref)


def dense_run(
    index_dir: Path, encoder_spec: str, queries: dict[str, str], k: int = 100, variant: str = "auto"
) -> tuple[Run, dict[str, float]]:
    """Rank the index for each query; returns the run and timing figures."""
    manifest = read_index_manifest(index_dir)
    ref = resolve(encoder_spec)
    check_space(query_space(ref), manifest.doc_tower)  # refuse before loading any weights
    index = LoadedIndex.load(index_dir)
    encoder = load_query_encoder(ref, variant)
    qids = list(queries)
    t0 = time.perf_counter()
    vectors = encoder.encode([queries[q] for q in qids])
    t1 = time.perf_counter()
    scores, rows = index.search(vectors, k)
    t2 = time.perf_counter()
    run = {
        qid: {index.ids[r]: float(s) for r, s in zip(rows[i], scores[i], strict=True) if r >= 0}
        for i, qid in enumerate(qids)
    }
    return run, {"encode_s": t1 - t0, "search_s": t2 - t1, "queries": len(qids)}
