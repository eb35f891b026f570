"""Retrieval metrics via ir-measures (pytrec_eval backend), never hand-rolled."""

from __future__ import annotations

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

from scalingnote.beir import Qrels

Run = dict[str, dict[str, float]]
MEASURES = {"ndcg@10": nDCG @ 10, "recall@100": R @ 100, "mrr@10": RR @ 10, "recall@10": R @ 10}


def evaluate(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean of each measure over the judged queries (a query with no results counts as 0)."""
    judged = {qid: docs for qid, docs in qrels.items() if any(r > 0 for r in docs.values())}
    agg = ir_measures.calc_aggregate(list(MEASURES.values()), judged, {q: run.get(q, {}) for q in judged})
    return {name: float(agg.get(m, 0.0)) for name, m in MEASURES.items()}


def overlap_at_k(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of common entries between row ``i`` of ``a`` and of ``b`` (two systems' top-k rows)."""
    k = a.shape[1]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist(), strict=True)]))
