"""Training data: (query, positive doc) examples, BM25 hard negatives and deterministic, resumable batches.

Sources: a dataset's judged qrels split, title → abstract pseudo pairs (each document's title as a query
for its own abstract), and doc2query pseudo-queries (``training.doc2query``). Every example carries the
full set of documents known to be relevant to its query, so the loss can mask them as false negatives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from scalingnote.beir import BeirDataset, Document
from scalingnote.training.loop import epoch_batch


def doc_key(doc_id: str) -> int:
    """A stable non-negative 63-bit key for a doc id (equal ids ⇔ equal keys, with overwhelming odds)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") >> 1


@dataclass(frozen=True)
class Example:
    """One training query with its positive document and the mined hard negatives (best first)."""

    query: str
    positive: str
    positive_text: str
    relevant: frozenset[str]
    negatives: tuple[str, ...] = ()


def qrels_examples(ds: BeirDataset, split: str) -> list[Example]:
    """One example per judged (query, relevant doc) pair of ``split``."""
    out = []
    for qid, docs in ds.qrels[split].items():
        relevant = frozenset(d for d, rel in docs.items() if rel > 0)
        out += [Example(ds.queries[qid], d, ds.corpus[d].full_text, relevant) for d in sorted(relevant)]
    return out


def title_examples(corpus: dict[str, Document]) -> list[Example]:
    """Title → abstract pairs for documents that have both (the abstract alone is the positive text)."""
    return [
        Example(d.title, d.id, d.text, frozenset({d.id})) for d in corpus.values() if d.title.strip() and d.text.strip()
    ]


def pseudo_query_examples(generated: dict[str, list[str]], corpus: dict[str, Document]) -> list[Example]:
    """doc2query pairs: each generated query → the document it was generated from."""
    return [
        Example(q, doc_id, corpus[doc_id].full_text, frozenset({doc_id}))
        for doc_id, queries in generated.items()
        if doc_id in corpus
        for q in queries
    ]


def mine_negatives(
    examples: Sequence[Example], corpus: dict[str, Document], depth: int = 30, skip: int = 3
) -> list[Example]:
    """Attach BM25 hard negatives: ranks ``skip … skip+depth`` minus the known relevant documents.

    The top ``skip`` ranks are left out: on sparsely judged data they are often unjudged positives.
    """
    from scalingnote.evaluation.bm25 import bm25_run

    unique = sorted({e.query for e in examples})
    run = bm25_run(corpus, {str(i): q for i, q in enumerate(unique)}, k=skip + depth)
    ranked = {q: sorted(run.get(str(i), {}).items(), key=lambda kv: -kv[1]) for i, q in enumerate(unique)}
    return [
        Example(
            e.query,
            e.positive,
            e.positive_text,
            e.relevant,
            tuple(d for d, _ in ranked[e.query][skip:] if d not in e.relevant),
        )
        for e in examples
    ]


@dataclass
class Batch:
    """One rank's share of a step: queries, doc columns (positives, then negatives) and masking keys."""

    queries: list[str]
    docs: list[str]
    target: torch.Tensor
    doc_keys: torch.Tensor
    positive_keys: torch.Tensor


class Batches:
    """Step ``s`` → the same batch on every run (:func:`epoch_batch`); each rank takes its slice of it."""

    def __init__(
        self,
        examples: Sequence[Example],
        corpus: dict[str, Document],
        batch_size: int,
        negatives: int = 1,
        seed: int = 0,
    ) -> None:
        if len(examples) < batch_size:
            raise ValueError(f"{len(examples)} training examples are fewer than one batch of {batch_size}")
        self.examples = list(examples)
        self.corpus = corpus
        self.doc_ids = list(corpus)
        self.batch_size = batch_size
        self.negatives = negatives
        self.seed = seed

    def indices(self, step: int) -> np.ndarray:
        return epoch_batch(self.seed, step, len(self.examples), self.batch_size)

    def get(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        if self.batch_size % world:
            raise ValueError(f"batch size {self.batch_size} is not divisible by {world} ranks")
        local = self.batch_size // world
        chosen = [self.examples[i] for i in self.indices(step)[rank * local : (rank + 1) * local]]
        rng = np.random.default_rng([self.seed, step, rank, 1])
        negatives: list[str] = []
        for e in chosen:
            if e.negatives:  # a fixed count per example keeps every rank's doc columns the same size
                picks = rng.choice(len(e.negatives), self.negatives, replace=len(e.negatives) < self.negatives)
                negatives += [e.negatives[i] for i in picks]
                continue
            picked: list[str] = []
            while len(picked) < self.negatives:  # no mined list: random non-relevant documents
                d = self.doc_ids[rng.integers(len(self.doc_ids))]
                if d not in e.relevant:
                    picked.append(d)
            negatives += picked
        width = max(len(e.relevant) for e in chosen)
        positive_keys = torch.full((len(chosen), width), -1, dtype=torch.long)
        for i, e in enumerate(chosen):
            positive_keys[i, : len(e.relevant)] = torch.tensor([doc_key(d) for d in sorted(e.relevant)])
        return Batch(
            queries=[e.query for e in chosen],
            docs=[e.positive_text for e in chosen] + [self.corpus[d].full_text for d in negatives],
            target=torch.arange(len(chosen)),
            doc_keys=torch.tensor([doc_key(e.positive) for e in chosen] + [doc_key(d) for d in negatives]),
            positive_keys=positive_keys,
        )


@dataclass
class CorpusPairs:
    """(query, positive) pairs against a fixed corpus of doc vectors: each query's positive row, and the keys
    that mask its other known positives out of the full-corpus softmax."""

    queries: list[str]
    target: torch.Tensor
    positive_keys: torch.Tensor
    doc_keys: torch.Tensor

    @classmethod
    def build(cls, examples: Sequence[Example], ids: Sequence[str]) -> CorpusPairs:
        row = {d: i for i, d in enumerate(ids)}
        kept = [e for e in examples if e.positive in row]
        width = max((len(e.relevant) for e in kept), default=1)
        positive_keys = torch.full((len(kept), width), -1, dtype=torch.long)
        for i, e in enumerate(kept):
            positive_keys[i, : len(e.relevant)] = torch.tensor([doc_key(d) for d in sorted(e.relevant)])
        target = torch.tensor([row[e.positive] for e in kept], dtype=torch.long)
        return cls([e.query for e in kept], target, positive_keys, torch.tensor([doc_key(d) for d in ids]))

    def __len__(self) -> int:
        return len(self.queries)

    def loss(self, tower, docs: torch.Tensor, rows: np.ndarray, loss_fn) -> torch.Tensor:
        """InfoNCE of the queries at ``rows``, embedded by ``tower``, over every doc vector."""
        idx = torch.from_numpy(np.asarray(rows))
        q = tower(**tower.batch([self.queries[i] for i in idx]))
        return loss_fn(q, docs, self.target[idx], self.doc_keys, self.positive_keys[idx])
