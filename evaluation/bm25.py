"""BM25 baseline with bm25s (Lucene scoring, English stopwords, Snowball stemming)."""

from __future__ import annotations

import bm25s
import Stemmer

from scalingnote.beir import Document
from scalingnote.evaluation.metrics import Run


def bm25_run(
    corpus: dict[str, Document], queries: dict[str, str], k: int = 100, k1: float = 0.9, b: float = 0.4
) -> Run:
    """Top-``k`` BM25 results per query over ``title + text`` (Anserini's default k1/b)."""
    stemmer = Stemmer.Stemmer("english")
    ids = list(corpus)
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(
        bm25s.tokenize([d.full_text for d in corpus.values()], stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    qids = list(queries)
    tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    docs, scores = retriever.retrieve(tokens, k=min(k, len(ids)), show_progress=False)
    return {
        qid: {ids[d]: float(s) for d, s in zip(docs[i], scores[i], strict=True) if s > 0} for i, qid in enumerate(qids)
    }
