"""Document store, filters, BM25 and hybrid search: the index layer against brute force, then ``/search``."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from scalingnote.artifacts import read_index_manifest
from scalingnote.beir import load_corpus
from scalingnote.errors import UserError
from scalingnote.index import fusion
from scalingnote.index.build import build_index
from scalingnote.index.docstore import Filter
from scalingnote.index.query import SearchSpec
from scalingnote.index.store import LoadedIndex
from scalingnote.runtime.bundle import BundleEncoder
from scalingnote.service.app import create_app
from scalingnote.service.settings import Settings
from tests.conftest import WORDS, Space

JOURNALS = ("Nature", "Cell", "Science", "Lancet")


def _metadata(i: int) -> dict:
    meta: dict = {"year": 2015 + i % 6, "journal": JOURNALS[i % 4], "tags": [f"t{i % 3}", f"t{i % 5}"]}
    if i % 2:
        meta["venue"] = {"kind": "journal" if i % 4 == 1 else "conference"}
    if i % 7 == 0:
        meta["open"] = True
    return meta


@pytest.fixture(scope="module")
def meta_space(tiny: Space, tmp_path_factory: pytest.TempPathFactory) -> Space:
    """The tiny space's tower over 150 random-word documents with metadata, indexed with BM25."""
    root = tmp_path_factory.mktemp("meta")
    rng, words = random.Random(3), WORDS.split()
    (root / "corpus").mkdir()
    with (root / "corpus" / "corpus.jsonl").open("w") as fh:
        for i in range(150):
            doc = {
                "_id": f"m{i}",
                "title": " ".join(rng.choices(words, k=2)),
                "text": " ".join(rng.choices(words, k=10)),
            }
            fh.write(json.dumps(doc | {"metadata": _metadata(i)}) + "\n")
    build_index(root / "corpus", str(tiny.model), root / "index", progress=False, bm25=True)
    return Space(tiny.model, root / "corpus", root / "index", tiny.bundle)


@pytest.fixture(scope="module")
def index(meta_space: Space) -> LoadedIndex:
    return LoadedIndex.load(meta_space.index)


@pytest.fixture(scope="module")
def encoder(meta_space: Space) -> BundleEncoder:
    return BundleEncoder(meta_space.bundle)


def _matches(meta: dict, flt: Filter, doc_id: str) -> bool:
    """The filter grammar, evaluated in plain Python on one document."""
    if flt.ids is not None and doc_id not in flt.ids:
        return False
    for key, condition in flt.fields.items():
        value: object = meta
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        wanted = condition.in_ if hasattr(condition, "in_") else [condition]
        have = value if isinstance(value, list) else [value]
        if not any(h is not None and type(h) is type(w) and h == w for h in have for w in wanted):
            return False
    return True


FILTERS = [
    {"fields": {"year": 2017}},
    {"fields": {"journal": {"in": ["Nature", "Lancet"]}}},
    {"fields": {"tags": "t1"}},
    {"fields": {"venue.kind": "journal", "year": {"in": [2016, 2018, 2020]}}},
    {"fields": {"open": True}},
    {"ids": ["m3", "m40", "m77", "m149", "nope"]},
    {"ids": [f"m{i}" for i in range(0, 150, 2)], "fields": {"journal": "Cell"}},
    {"fields": {"year": "2017"}},  # a string never equals the number
    {"fields": {"missing": 1}},
]


@pytest.mark.parametrize("raw", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_dense_filter_equals_brute_force(raw: dict, index: LoadedIndex, encoder: BundleEncoder, meta_space) -> None:
    corpus = load_corpus(meta_space.corpus / "corpus.jsonl")
    flt = Filter.model_validate(raw)
    allowed = [r for r, (doc_id, doc) in enumerate(corpus.items()) if _matches(doc.metadata, flt, doc_id)]
    assert index.filter_rows(flt).tolist() == allowed
    vectors = index.vectors()
    for query in ("protein signal pathway", "brain memory neuron sleep"):
        q, _ = encoder.encode_with_flags([query])
        scores = vectors[allowed] @ q[0]
        order = np.argsort(-scores, kind="stable")[:10]
        (hits,) = index.query(q, [query], [SearchSpec(10, "dense", flt)])
        assert [h.id for h in hits] == [corpus_id(corpus, allowed[i]) for i in order]
        assert [h.score for h in hits] == pytest.approx(scores[order].tolist(), abs=1e-5)


def corpus_id(corpus: dict, row: int) -> str:
    return list(corpus)[row]


def test_bm25_filter_and_fields(index: LoadedIndex, meta_space: Space) -> None:
    corpus = load_corpus(meta_space.corpus / "corpus.jsonl")
    flt = Filter.model_validate({"fields": {"journal": "Science"}})
    (hits,) = index.query(
        np.zeros((1, index.dim), np.float32), ["gene cancer"], [SearchSpec(20, "bm25", flt, ("text", "year"))]
    )
    assert hits, "some Science document mentions gene or cancer"
    for hit in hits:
        doc = corpus[hit.id]
        assert doc.metadata["journal"] == "Science" and {"gene", "cancer"} & set(doc.full_text.split())
        assert hit.fields == {"text": doc.text, "year": doc.metadata["year"]}
    allowed = set(index.filter_rows(flt).tolist())
    expected = [(r, sc) for r, sc in index.lexical.search(["gene cancer"], 150)[0] if r in allowed][:20]
    assert [h.score for h in hits] == pytest.approx([sc for _, sc in expected])  # ties may come in any order
    above = expected[-1][1]
    assert {h.id for h in hits if h.score > above} == {corpus_id(corpus, r) for r, sc in expected if sc > above}


def test_hybrid_fuses_both_rankings(index: LoadedIndex, encoder: BundleEncoder) -> None:
    query = "immune virus vaccine"
    q, _ = encoder.encode_with_flags([query])
    (dense,) = index.query(q, [query], [SearchSpec(100, "dense")])
    (lexical,) = index.query(q, [query], [SearchSpec(100, "bm25")])
    rows = {doc_id: r for r, doc_id in enumerate(index.ids)}
    expected = fusion.rrf([[(rows[h.id], h.score) for h in ranking] for ranking in (dense, lexical)])[:10]
    (hybrid,) = index.query(q, [query], [SearchSpec(10)])  # the default mode of an index with BM25
    assert [(h.id, h.score) for h in hybrid] == [(index.ids[r], pytest.approx(s)) for r, s in expected]
    (convex,) = index.query(q, [query], [SearchSpec(10, "hybrid", weight=1.0)])
    assert [h.id for h in convex] == [h.id for h in dense[:10]], "weight 1 is the dense ranking"
    (floor,) = index.query(q, [query], [SearchSpec(10, "dense", score_threshold=dense[4].score)])
    assert [h.id for h in floor] == [h.id for h in dense[:5]]


def test_batched_queries_equal_one_at_a_time(index: LoadedIndex, encoder: BundleEncoder) -> None:
    """Mixed modes, depths and filters in one call: the shared FAISS searches change no query's answer."""
    texts = ["immune virus vaccine", "gene cancer", "brain memory sleep", "heart blood dose", "protein signal",
             "cell energy", "lung virus"]  # fmt: skip
    flt = Filter.model_validate({"fields": {"journal": {"in": ["Cell", "Nature"]}}})
    specs = [SearchSpec(10), SearchSpec(5, "dense", fields=("journal",)), SearchSpec(10, "hybrid", flt),
             SearchSpec(150, "hybrid", weight=0.3), SearchSpec(7, "bm25"), SearchSpec(20),  # shares the 1st's search
             SearchSpec(5, "dense")]  # fmt: skip
    q, _ = encoder.encode_with_flags(texts)
    together = index.query(q, texts, specs)
    alone = [index.query(q[i : i + 1], [t], [s])[0] for i, (t, s) in enumerate(zip(texts, specs, strict=True))]
    assert [[(h.id, h.fields) for h in r] for r in together] == [[(h.id, h.fields) for h in r] for r in alone]
    for got, want in zip(together, alone, strict=True):
        assert [h.score for h in got] == pytest.approx([h.score for h in want])
    assert all(together), "every spec finds something"


def test_fusion_functions() -> None:
    assert fusion.rrf([[(1, 9.0), (2, 8.0)], [(2, 5.0), (3, 4.0)]]) == [(2, 1 / 62 + 1 / 61), (1, 1 / 61), (3, 1 / 62)]
    assert fusion.convex([(1, 0.9), (2, 0.5)], [(2, 10.0), (3, 2.0)], 0.5) == [(1, 0.5), (2, 0.5), (3, 0.0)]


def test_manifest_checksums_cover_the_new_files(meta_space: Space, tmp_path: Path) -> None:
    files = read_index_manifest(meta_space.index).files
    assert {"docs.sqlite", "bm25/vocab.index.json"} <= set(files)
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(meta_space.index, bad)
    path = bad / "bm25" / "vocab.index.json"
    path.write_text(path.read_text().replace('"', "'", 1))
    with pytest.raises(UserError, match=r"checksum mismatch for bm25/vocab\.index\.json"):
        LoadedIndex.load(bad)


def test_index_without_bm25_or_docstore_refuses_clearly(tiny: Space) -> None:
    index = LoadedIndex.load(tiny.index)
    assert index.modes == ("dense",) and index.default_mode == "dense"
    with pytest.raises(UserError, match="holds no BM25 index"):
        index.query(np.zeros((1, index.dim), np.float32), ["x"], [SearchSpec(3, "hybrid")])


# --- /search -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(meta_space: Space) -> Iterator[TestClient]:
    settings = Settings(_env_file=None, bundle=meta_space.bundle, index_root=meta_space.index)  # type: ignore[call-arg]
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_search_with_filter_returns_only_matching_documents(client: TestClient, meta_space: Space) -> None:
    corpus = load_corpus(meta_space.corpus / "corpus.jsonl")
    for mode in ("dense", "bm25", "hybrid"):
        body = {"query": "gene protein cell", "k": 50, "mode": mode, "fields": ["journal", "metadata"]}
        r = client.post("/search", json=body | {"filter": {"fields": {"journal": {"in": ["Cell", "Nature"]}}}})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert results and all(corpus[h["id"]].metadata["journal"] in ("Cell", "Nature") for h in results)
        assert all(h["fields"]["metadata"] == corpus[h["id"]].metadata for h in results)
    r = client.post("/search", json={"query": "gene", "filter": {"ids": ["m5", "m6"]}, "mode": "dense"})
    assert sorted(h["id"] for h in r.json()["results"]) == ["m5", "m6"]


def test_search_default_mode_is_hybrid_and_matches_the_index(client: TestClient, index: LoadedIndex, encoder) -> None:
    query = "heart blood dose trial"
    q, _ = encoder.encode_with_flags([query])
    expected = [(h.id, h.score) for h in index.query(q, [query], [SearchSpec(10, "hybrid")])[0]]
    got = client.post("/search", json={"query": query}).json()["results"]
    assert [(h["id"], pytest.approx(h["score"])) for h in got] == expected
    batch = client.post("/search/batch", json={"queries": [query, "gene"], "mode": "hybrid"}).json()
    assert [(h["id"], pytest.approx(h["score"])) for h in batch["responses"][0]["results"]] == expected


@pytest.mark.parametrize(
    "body",
    [
        {"query": "x", "mode": "sparse"},
        {"query": "x", "filter": {"fields": {"year": [2017]}}},
        {"query": "x", "filter": {"fields": {"year": {"in": []}}}},
        {"query": "x", "filter": {"fields": {"year": {"eq": 1}}}},
        {"query": "x", "filter": {"ids": "m1"}},
        {"query": "x", "filter": {"where": {}}},
        {"query": "x", "fields": "text"},
        {"query": "x", "weight": 1.5},
        {"query": "x", "score_threshold": "high"},
    ],
)
def test_bad_search_options_are_422(client: TestClient, body: dict) -> None:
    r = client.post("/search", json=body)
    assert r.status_code == 422 and r.json()["error"], r.text


def test_mode_the_index_lacks_is_422(tiny: Space) -> None:
    settings = Settings(_env_file=None, bundle=tiny.bundle, index_root=tiny.index)  # type: ignore[call-arg]
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.post("/search", json={"query": "gene", "mode": "bm25"})
        assert r.status_code == 422 and "--bm25" in r.json()["message"], r.text
        r = c.post("/search", json={"query": "gene", "mode": "dense", "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3


def test_cached_index_shares_its_dense_files_and_builds_bm25_for_itself(
    meta_space: Space, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scalingnote.index.build import cached_index

    monkeypatch.setenv("SCALINGNOTE_INDEX_CACHE_DIR", str(tmp_path / "cache"))
    cached_index(meta_space.corpus, str(meta_space.model), tmp_path / "dense")
    cached_index(meta_space.corpus, str(meta_space.model), tmp_path / "hybrid", bm25=True)
    dense, hybrid = LoadedIndex.load(tmp_path / "dense"), LoadedIndex.load(tmp_path / "hybrid")
    assert (tmp_path / "dense" / "index.faiss").stat().st_ino == (tmp_path / "hybrid" / "index.faiss").stat().st_ino
    assert dense.lexical is None and hybrid.modes == ("dense", "bm25", "hybrid")
    assert hybrid.lexical.search(["gene"], 5) == LoadedIndex.load(meta_space.index).lexical.search(["gene"], 5)
