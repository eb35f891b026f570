"""Fusing a dense and a lexical ranking: reciprocal-rank fusion, or a convex combination of min-max scores."""

from __future__ import annotations

from collections.abc import Sequence

RRF_K = 60  # Cormack et al. (2009), the constant Elasticsearch, OpenSearch and Qdrant use

Ranking = list[tuple[int, float]]  # (row, score), best first


def rrf(rankings: Sequence[Ranking], k: int = RRF_K) -> Ranking:
    """Each row scores the sum of ``1 / (k + rank)`` over the rankings that hold it (ranks from 1)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (row, _) in enumerate(ranking, 1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def _min_max(ranking: Ranking) -> dict[int, float]:
    if not ranking:
        return {}
    scores = [s for _, s in ranking]
    low, span = min(scores), max(scores) - min(scores)
    return {row: (s - low) / span if span > 0 else 1.0 for row, s in ranking}


def convex(dense: Ranking, lexical: Ranking, weight: float) -> Ranking:
    """``weight * dense + (1 - weight) * lexical`` over each ranking's min-max normalised scores (a row a
    ranking lacks scores 0 there)."""
    d, lx = _min_max(dense), _min_max(lexical)
    fused = {row: weight * d.get(row, 0.0) + (1 - weight) * lx.get(row, 0.0) for row in d.keys() | lx.keys()}
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))
