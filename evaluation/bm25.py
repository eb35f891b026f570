"""BM25 baseline: the index's own lexical side (:mod:`index.lexical`) over a whole corpus."""

from __future__ import annotations

from scalingnote.beir import Document
from scalingnote.evaluation.metrics import Run
from scalingnote.index.lexical import Lexical


def bm25_run(corpus: dict[str, Document], queries: dict[str, str], k: int = 100) -> Run:
    """Top-``k`` BM25 results per query over ``title + text``."""
    ids = list(corpus)
    lexical = Lexical.build([d.full_text for d in corpus.values()])
    qids = list(queries)
    found = lexical.search([queries[q] for q in qids], k)
    return {qid: {ids[row]: score for row, score in found[i]} for i, qid in enumerate(qids)}
