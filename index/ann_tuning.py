"""Recall-targeted search parameters for ANN indexes: pick the smallest ``efSearch`` (HNSW) or ``nprobe`` (IVF)
whose recall@k against exact search reaches a target on held-out queries, and apply a recorded choice."""

from __future__ import annotations

import faiss
import numpy as np

from scalingnote.artifacts import SearchTuning
from scalingnote.errors import UserError
from scalingnote.index.faiss_backend import build, sample_rows

CANDIDATES = {
    "efSearch": [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024],
    "nprobe": [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024],
}
TUNE_QUERIES = 1000  # held-out queries used for the choice (a seeded sample when more are given)


def search_parameter(index: faiss.Index) -> str | None:
    """The knob that trades recall for speed in ``index``: nprobe (IVF), efSearch (HNSW) or None (exact)."""
    if faiss.try_extract_index_ivf(index) is not None:
        return "nprobe"
    if "HNSW" in type(faiss.downcast_index(index)).__name__:
        return "efSearch"
    return None


def apply(index: faiss.Index, params: dict[str, int]) -> None:
    """Set recorded search parameters (e.g. ``{"efSearch": 64}``) on ``index``."""
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k (``truth`` rows) that ``found`` retrieved."""
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of each query's exact inner-product top-k (``vectors`` may be a memmap)."""
    return build(vectors, "Flat").search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def sample_queries(queries: np.ndarray, n: int = TUNE_QUERIES) -> np.ndarray:
    return queries[sample_rows(len(queries), n)]


def tune(
    index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, target: float, source: str, k: int = 10
) -> SearchTuning:
    """The cheapest setting of ``index``'s search parameter with recall@k ≥ ``target`` on ``queries`` (applied
    to ``index``); a one-line error when no candidate reaches it."""
    name = search_parameter(index)
    queries = sample_queries(queries)
    if name is None:
        return SearchTuning(params={}, recall_target=target, recall=1.0, k=k, queries=len(queries), source=source)
    truth = exact_top_k(vectors, queries, k)
    candidates = CANDIDATES[name]
    if name == "nprobe":
        nlist = faiss.extract_index_ivf(index).nlist
        candidates = [c for c in candidates if c < nlist] + [nlist]
    best = 0.0
    for value in candidates:
        apply(index, {name: value})
        recall = recall_at_k(index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1], truth)
        best = max(best, recall)
        if recall >= target:
            found = {name: value}
            return SearchTuning(
                params=found, recall_target=target, recall=recall, k=k, queries=len(queries), source=source
            )
    raise UserError(
        f"recall target {target} not reached: best recall@{k} {best:.4f} at {name}={candidates[-1]} on "
        f"{len(queries)} queries; lower the target or use a larger index (e.g. HNSW64, more IVF lists, no PQ)"
    )
