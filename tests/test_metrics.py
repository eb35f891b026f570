"""Metrics come from ir-measures; BM25 from bm25s: checked on hand-computable cases."""

import math
from pathlib import Path

import pytest

from scalingnote.beir import load_dataset
from scalingnote.evaluation.bm25 import bm25_run
from scalingnote.evaluation.metrics import evaluate


def test_perfect_and_partial_rankings() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 1}}
    perfect = evaluate(qrels, {"q1": {"d1": 2.0, "x": 1.0}, "q2": {"d2": 2.0, "d3": 1.5}})
    assert perfect["ndcg@10"] == pytest.approx(1.0) and perfect["mrr@10"] == pytest.approx(1.0)
    # q1's relevant doc at rank 2: nDCG = 1/log2(3), RR = 1/2; q2 finds one of two at rank 1
    partial = evaluate(qrels, {"q1": {"x": 2.0, "d1": 1.0}, "q2": {"d2": 1.0}})
    q2_ndcg = 1.0 / (1.0 + 1.0 / math.log2(3))
    assert partial["ndcg@10"] == pytest.approx((1 / math.log2(3) + q2_ndcg) / 2)
    assert partial["mrr@10"] == pytest.approx(0.75)
    assert partial["recall@100"] == pytest.approx(0.75)


def test_query_missing_from_run_counts_as_zero() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    assert evaluate(qrels, {"q1": {"d1": 1.0}})["ndcg@10"] == pytest.approx(0.5)


def test_bm25_finds_the_topic(tiny_beir: Path) -> None:
    ds = load_dataset(tiny_beir, ("test",))
    run = bm25_run(ds.corpus, ds.split_queries("test"), k=5)
    for qid, docs in run.items():
        top = max(docs, key=docs.get)
        assert top.split("-")[0] == qid.split("-")[-1]
