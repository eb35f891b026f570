"""What one query asks of an index beyond its vector: how many hits, the retrieval mode, a filter, the fields to
return and a score floor."""

from __future__ import annotations

from dataclasses import dataclass

from scalingnote.choices import Mode
from scalingnote.index.docstore import Filter

__all__ = ["HYBRID_DEPTH", "Mode", "SearchSpec"]

HYBRID_DEPTH = 100  # candidates taken from each side before fusing (at least k)


@dataclass(frozen=True)
class SearchSpec:
    """``mode`` None means the index's default (hybrid when it holds BM25, else dense); ``weight`` set makes
    hybrid a convex combination with that dense weight instead of reciprocal-rank fusion."""

    k: int
    mode: Mode | None = None
    filter: Filter | None = None
    fields: tuple[str, ...] = ()
    score_threshold: float | None = None
    weight: float | None = None

    def plain(self, default_mode: Mode) -> bool:
        """Dense top-k and nothing else: what one batched FAISS call answers for many queries at once."""
        mode = self.mode or default_mode
        return (
            mode == "dense"
            and (self.filter is None or self.filter.empty)
            and not self.fields
            and (self.score_threshold is None)
        )
