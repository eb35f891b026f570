"""The lexical side of an index: BM25 with bm25s (Lucene scoring, Anserini's k1 0.9 and b 0.4, English stopwords,
Snowball stemming) over ``title + text``, saved under ``bm25/`` beside the FAISS index. No torch: it serves."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

BM25_DIR = "bm25"
K1, B = 0.9, 0.4
TOKEN = re.compile(r"(?u)\b\w\w+\b")  # bm25s.tokenize's default (scikit-learn's CountVectorizer)
STOPWORDS = frozenset(STOPWORDS_EN)

logging.getLogger("bm25s").setLevel(logging.WARNING)


class Lexical:
    """A BM25 index over a corpus's rows."""

    def __init__(self, retriever: bm25s.BM25) -> None:
        self.retriever = retriever
        self.stemmer = Stemmer.Stemmer("english")
        self.vocab: dict[str, int] = retriever.vocab_dict
        self.count = int(retriever.scores["num_docs"])

    @classmethod
    def build(cls, texts: Sequence[str]) -> Lexical:
        retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
        stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
        retriever.index(tokens, show_progress=False)
        return cls(retriever)

    def save(self, directory: Path) -> list[str]:
        """Write the index under ``directory/bm25``; returns the files' paths relative to ``directory``."""
        out = Path(directory) / BM25_DIR
        self.retriever.save(str(out), show_progress=False)
        return sorted(p.relative_to(directory).as_posix() for p in out.rglob("*") if p.is_file())

    @classmethod
    def load(cls, directory: Path) -> Lexical:
        return cls(bm25s.BM25.load(str(Path(directory) / BM25_DIR), mmap=True, show_progress=False))

    def token_ids(self, text: str) -> list[int]:
        """``text`` tokenised as the corpus was (bm25s.tokenize: lower case, its token pattern, English stopwords,
        Snowball stems), as vocabulary ids; words the corpus never has are dropped."""
        words = [w for w in TOKEN.findall(text.lower()) if w not in STOPWORDS]
        return [i for stem in self.stemmer.stemWords(words) if (i := self.vocab.get(stem)) is not None]

    def search(self, queries: Sequence[str], k: int, rows: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        """Per query, up to ``k`` (row, score) pairs with a positive score, best first (ties by row); only
        among ``rows`` when given. Scores come from bm25s; tokenising and top-k here cost a tenth of its
        ``retrieve`` per query."""
        mask = None
        if rows is not None:
            mask = np.zeros(self.count, dtype=np.float32)
            mask[rows] = 1.0
        out = []
        for text in queries:
            ids = self.token_ids(text)
            if not ids or k <= 0:
                out.append([])
                continue
            scores = self.retriever.get_scores_from_ids(ids, weight_mask=mask)
            top = np.flatnonzero(scores > 0)
            if len(top) > k:
                top = top[np.argpartition(-scores[top], k - 1)[:k]]
            top = top[np.lexsort((top, -scores[top]))]
            out.append([(int(r), float(scores[r])) for r in top])
        return out
