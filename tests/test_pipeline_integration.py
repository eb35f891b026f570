"""The whole ``cpu`` profile, capped to 2 steps per stage, on a SciFact subset with the real MiniLM (≈3 min).

Checks the artifact contract end to end: the student bundle queries the teacher index and nothing else,
the report covers every system, and a rerun skips every stage.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from scalingnote.artifacts import read_bundle_manifest, read_index_manifest
from scalingnote.beir import load_dataset
from scalingnote.index.store import LoadedIndex
from scalingnote.runtime.bundle import BundleEncoder
from scalingnote.specs import doc_space, query_space, resolve
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def write_subset(scifact: Path, root: Path, n_test: int = 30, n_train: int = 80, n_extra: int = 250) -> Path:
    """Judged test/train queries, their relevant docs and ``n_extra`` random others, as a BEIR dir."""
    ds = load_dataset(scifact, ("train", "test"))
    rng = random.Random(0)
    qrels = {
        split: dict(rng.sample(sorted(ds.qrels[split].items()), n))
        for split, n in (("test", n_test), ("train", n_train))
    }
    keep = {d for split in qrels.values() for docs in split.values() for d in docs}
    keep |= set(rng.sample(sorted(ds.corpus), n_extra))
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as fh:
        for doc_id in sorted(keep):
            d = ds.corpus[doc_id]
            fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
    with (root / "queries.jsonl").open("w") as fh:
        for qid in sorted({q for split in qrels.values() for q in split}):
            fh.write(json.dumps({"_id": qid, "text": ds.queries[qid]}) + "\n")
    for split, rows in qrels.items():
        lines = [f"{q}\t{d}\t{r}" for q, docs in rows.items() for d, r in docs.items()]
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    return root


def test_cpu_profile_end_to_end_then_rerun_skips_everything(scifact: Path, tmp_path: Path) -> None:
    data = write_subset(scifact, tmp_path / "scifact-mini")
    out = tmp_path / "run"
    args = ["pipeline", "--profile", "cpu", "--dataset", str(data), "--out", str(out)]
    args += ["--max-steps", "2", "--max-queries", "400", "--no-progress"]
    first = run_cli(*args, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]

    space = doc_space(resolve(out / "teacher"))
    assert read_index_manifest(out / "teacher-index").space == space
    assert query_space(resolve(out / "student")) == space
    assert query_space(resolve(out / "student-l2")) == space
    e2e = doc_space(resolve(out / "end2end"))
    assert e2e != space and query_space(resolve(out / "end2end")) == e2e
    assert read_index_manifest(out / "end2end-index").space == e2e
    assert read_bundle_manifest(out / "teacher-bundle").space == space
    bundle = read_bundle_manifest(out / "bundle", verify=True)
    assert bundle.space == space and bundle.gates["fp32_min_cosine"] >= 0.9999

    index = LoadedIndex.load(out / "teacher-index")
    _, rows = index.search(BundleEncoder(out / "bundle").encode(["vitamin D deficiency and bone density"]), 5)
    corpus_ids = {json.loads(line)["_id"] for line in (data / "corpus.jsonl").read_text().splitlines()}
    assert {index.ids[r] for r in rows[0]} <= corpus_ids

    report = json.loads((out / "report.json").read_text())
    systems = [r["system"] for r in report["rows"]]
    assert systems[:2] == ["BM25", "minilm-l6 off the shelf"]
    assert [r["role"] for r in report["rows"][:4]] == ["bm25", "baseline", "teacher", "teacher"]
    students = {(r["layers"], r["variant"]) for r in report["rows"] if r["role"] == "student"}
    assert students >= {(4, "torch"), (2, "fp32")}
    expected = {
        "teacher: stage-1 query tower (torch)",
        "teacher query tower, ONNX fp32",
        "distilled 4-layer student (torch)",
        "distilled 4-layer student, ONNX fp32",
        "distilled 2-layer student (torch)",
        "end-to-end 2-layer dual tower (torch)",
    }
    assert expected <= set(systems)
    assert {t["target"].split(" ")[0] for t in report["targets"]} >= {"teacher", "distilled"}
    for row in report["rows"]:
        assert 0.0 <= row["metrics"]["ndcg@10"] <= 1.0
        assert row["system"] == "BM25" or (row["latency"]["p50_ms"] > 0 and row["params"] > 0)
    assert "distilled 4-layer student, ONNX fp32" in (out / "report.md").read_text()
    assert (out / "report.png").stat().st_size > 0
    for stage in ("teacher", "student", "student-l2", "end2end"):
        assert (out / "curves" / f"{stage}.png").is_file()

    # the off-the-shelf encoder must not be able to query the teacher's index
    index_arg = ["--index", str(out / "teacher-index")]
    refused = run_cli("eval", "--dataset", str(data), *index_arg, "--query-encoder", "minilm-l6")
    assert refused.returncode == 2 and "space" in refused.stderr.lower()

    second = run_cli(*args, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    stages = ("teacher", "teacher-index", "teacher-bundle", "student", "bundle", "student-l2", "bundle-l2")
    for stage in (*stages, "end2end", "end2end-index", "baseline-minilm-l6"):
        assert f"[{stage}] up to date" in second.stdout
