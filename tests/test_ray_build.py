"""The index build on Ray Data (issue #11, part 1): same vectors and scores as the in-process build, a killed
actor is restarted and its task retried, incremental rebuilds, and a clear error for an unreachable cluster."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from scalingnote.beir import load_dataset
from scalingnote.evaluation.dense import dense_run
from scalingnote.evaluation.metrics import evaluate
from scalingnote.index import versions
from scalingnote.index.build import build_index, work_dir
from scalingnote.index.ray_build import FAILPOINT, FAILPOINT_ENV, RayOptions, failpoint_mark
from tests.conftest import Space, run_cli, write_corpus

pytest.importorskip("ray")


def _vectors(index: Path) -> np.ndarray:
    flat = faiss.read_index(str(index / "index.faiss"))
    return flat.reconstruct_n(0, flat.ntotal)


def _ids(index: Path) -> list[str]:
    return json.loads((index / "docs.json").read_text())["ids"]


def _scores(dataset: Path, index: Path, encoder: str) -> dict[str, float]:
    """Test-split metrics to the 4 decimals reports print (vectors agree to ~1e-7: padding differs by batch)."""
    ds = load_dataset(dataset, ("test",))
    run, _ = dense_run(index, encoder, ds.split_queries("test"))
    return {name: round(value, 4) for name, value in evaluate(ds.qrels["test"], run).items()}


def assert_same_index(a: Path, b: Path) -> None:
    assert _ids(a) == _ids(b)
    cos = (_vectors(a) * _vectors(b)).sum(axis=1)
    assert cos.min() >= 0.9999, f"min cosine {cos.min()}"


def test_the_ray_build_matches_the_in_process_build(tiny_beir: Path, tiny_model: Path, tmp_path: Path) -> None:
    local = build_index(tiny_beir, str(tiny_model), tmp_path / "local", shard_size=5, progress=False)
    ray = build_index(
        tiny_beir, str(tiny_model), tmp_path / "ray", shard_size=5, progress=False, ray=RayOptions(actors=2)
    )
    assert ray.count == local.count and ray.space == local.space and ray.encoder == local.encoder
    assert ray.vectors is not None and (ray.vectors.embedded, ray.vectors.reused) == (local.count, 0)
    assert_same_index(tmp_path / "local", tmp_path / "ray")
    assert _scores(tiny_beir, tmp_path / "ray", str(tiny_model)) == _scores(
        tiny_beir, tmp_path / "local", str(tiny_model)
    )
    assert not work_dir(tmp_path / "ray").exists(), "the work dir goes once the index is published"


def test_a_killed_actor_is_restarted_and_the_index_is_complete(
    tiny: Space, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write_corpus(tmp_path / "corpus", 60, seed=3)
    build_index(corpus, str(tiny.model), tmp_path / "local", progress=False)
    monkeypatch.setenv(FAILPOINT_ENV, FAILPOINT)  # the first actor to get a batch kills itself (SIGKILL)
    out = tmp_path / "ray"
    manifest = build_index(corpus, str(tiny.model), out, shard_size=8, progress=False, ray=RayOptions(actors=2))
    assert failpoint_mark(work_dir(out)).is_file(), "the failpoint never fired: no actor was killed"
    assert manifest.count == 60
    assert_same_index(tmp_path / "local", out)


def test_a_ray_rebuild_embeds_only_changed_documents(tiny: Space, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", 30, seed=5)
    root = tmp_path / "root"
    options = RayOptions(actors=1)
    first = versions.rebuild(root, corpus, str(tiny.model), progress=False, ray=options)
    assert first.vectors is not None and first.vectors.embedded == 30
    rows = [json.loads(line) for line in (corpus / "corpus.jsonl").read_text().splitlines()]
    rows[0]["text"] += " revised"
    (corpus / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-2]))
    second = versions.rebuild(root, corpus, str(tiny.model), progress=False, ray=options)
    assert second.vectors is not None
    assert (second.vectors.embedded, second.vectors.reused, second.vectors.dropped) == (1, 27, 2)
    build_index(corpus, str(tiny.model), tmp_path / "full", progress=False)
    assert_same_index(tmp_path / "full", versions.current_path(root))


def test_the_cli_builds_on_ray_and_names_an_unreachable_cluster(tiny: Space, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", 12, seed=9)
    args = ["index", "build", "--dataset", str(corpus), "--doc-encoder", str(tiny.model), "--engine", "ray"]
    done = run_cli(*args, "--out", str(tmp_path / "ok"), "--ray-actors", "1")
    assert done.returncode == 0, done.stderr
    assert "indexed 12 docs" in done.stdout
    bad = run_cli(*args, "--out", str(tmp_path / "bad"), "--ray-address", "127.0.0.1:9", timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert "error: cannot reach the Ray cluster at 127.0.0.1:9" in bad.stderr
    assert not (tmp_path / "bad").exists()


def scifact_slice(scifact: Path, root: Path, others: int = 700) -> Path:
    """A BEIR dataset of SciFact's test-judged documents plus ``others`` more, with its queries and test qrels."""
    qrels = (scifact / "qrels" / "test.tsv").read_text().splitlines()
    judged = {line.split("\t")[1] for line in qrels[1:]}
    lines = (scifact / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if json.loads(line)["_id"] in judged]
    kept += [line for line in lines if json.loads(line)["_id"] not in judged][:others]
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    (root / "queries.jsonl").write_bytes((scifact / "queries.jsonl").read_bytes())
    (root / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return root


@pytest.mark.integration
def test_on_scifact_the_ray_build_matches_the_in_process_build(scifact: Path, tmp_path: Path) -> None:
    data = scifact_slice(scifact, tmp_path / "slice")
    local = build_index(data, "minilm-l6", tmp_path / "local", max_length=128, progress=False)
    ray = build_index(data, "minilm-l6", tmp_path / "ray", max_length=128, progress=False, ray=RayOptions(actors=2))
    assert ray.count == local.count > 900 and ray.space == local.space
    assert_same_index(tmp_path / "local", tmp_path / "ray")
    scores = _scores(data, tmp_path / "ray", "minilm-l6")
    assert scores == _scores(data, tmp_path / "local", "minilm-l6") and scores["ndcg@10"] > 0.6
