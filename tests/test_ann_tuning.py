"""Recall-targeted ANN search parameters: the cheapest efSearch/nprobe that reaches the target is chosen and
recorded at build time, the service's loader applies it, and an unreachable target is a one-line error."""

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from scalingnote.artifacts import read_index_manifest
from scalingnote.errors import UserError
from scalingnote.index import ann_tuning, faiss_backend
from scalingnote.index.build import build_index
from scalingnote.index.store import LoadedIndex
from tests.conftest import run_cli


def clustered(n: int, dim: int = 32, centres: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(centres, dim))[rng.integers(0, centres, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base vectors, tuning queries, and other (evaluation) queries, from one distribution."""
    x = clustered(6000)
    return x[:5000], x[5000:5500], x[5500:]


@pytest.mark.parametrize("factory", ["IVF64,Flat", "HNSW8"])
def test_the_cheapest_setting_that_reaches_the_target_is_chosen(factory: str, data) -> None:
    base, tune_q, eval_q = data
    index = faiss_backend.build(base, factory)
    name = ann_tuning.search_parameter(index)
    choice = ann_tuning.tune(index, base, tune_q, 0.95, "synthetic")
    (value,) = choice.params.values()
    assert set(choice.params) == {name} and choice.recall >= 0.95 and choice.queries == 500
    truth = ann_tuning.exact_top_k(base, tune_q, 10)
    smaller = [c for c in ann_tuning.CANDIDATES[name] if c < value]
    if smaller:  # the previous candidate missed the target: the choice is the cheapest one
        ann_tuning.apply(index, {name: smaller[-1]})
        assert ann_tuning.recall_at_k(index.search(tune_q, 10)[1], truth) < 0.95
    ann_tuning.apply(index, choice.params)  # and it holds on queries it was not tuned on
    assert ann_tuning.recall_at_k(index.search(eval_q, 10)[1], ann_tuning.exact_top_k(base, eval_q, 10)) > 0.9


def test_an_unreachable_target_is_a_one_line_error(data) -> None:
    base, tune_q, _ = data
    index = faiss_backend.build(base, "IVF16,PQ4x4")
    with pytest.raises(UserError, match=r"recall target 0.99 not reached: best recall@10 0\.\d+ at nprobe=16"):
        ann_tuning.tune(index, base, tune_q, 0.99, "synthetic")


def test_exact_indexes_need_no_parameter(data) -> None:
    base, tune_q, _ = data
    choice = ann_tuning.tune(faiss_backend.build(base, "Flat"), base, tune_q, 0.99, "synthetic")
    assert choice.params == {} and choice.recall == 1.0


def build_cli(data: Path, model: Path, out: Path, factory: str, target: str):
    args = ["--dataset", str(data), "--doc-encoder", str(model), "--out", str(out), "--index-factory", factory]
    return run_cli("index", "build", *args, "--recall-target", target)


def test_build_records_the_choice_and_the_loader_applies_it(tiny_beir: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "ivf"
    r = build_cli(tiny_beir, tiny_model, out, "IVF8,Flat", "0.9")
    assert r.returncode == 0, r.stderr
    search = read_index_manifest(out).search
    assert search is not None and search.source == str(tiny_beir / "queries.jsonl")
    assert search.recall >= 0.9 and f"nprobe={search.params['nprobe']}" in r.stdout
    loaded = LoadedIndex.load(out)
    assert faiss.extract_index_ivf(loaded.index).nprobe == search.params["nprobe"]
    manifest = json.loads((out / "manifest.json").read_text())  # the manifest, not the file, decides
    manifest["search"]["params"]["nprobe"] = 3
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert faiss.extract_index_ivf(LoadedIndex.load(out).index).nprobe == 3


def test_without_queries_the_corpus_is_sampled(tiny_beir: Path, tiny_model: Path, tmp_path: Path) -> None:
    corpus_only = tmp_path / "data"
    corpus_only.mkdir()
    (corpus_only / "corpus.jsonl").write_bytes((tiny_beir / "corpus.jsonl").read_bytes())
    m = build_index(corpus_only, str(tiny_model), tmp_path / "hnsw", "HNSW8", recall_target=0.9, progress=False)
    assert m.search is not None and m.search.source.startswith("documents") and m.search.queries == 40


def test_an_unreachable_target_publishes_nothing(tiny_beir: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "pq"
    r = build_cli(tiny_beir, tiny_model, out, "IVF2,PQ2x2", "1.0")
    assert r.returncode == 2 and "recall target 1.0 not reached" in r.stderr and not out.exists()
