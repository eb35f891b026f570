"""Index build: manifest contract, search sanity, atomic publish, SIGKILL leaves no half index, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scalingnote.artifacts import read_index_manifest, weights_sha256
from scalingnote.errors import ArtifactError, UserError
from scalingnote.index.build import build_index, work_dir
from scalingnote.index.store import LoadedIndex
from scalingnote.modeling.tower import Tower


@pytest.fixture(scope="module")
def tiny_index(tiny_model: Path, tiny_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "index"
    build_index(tiny_beir, str(tiny_model), out, shard_size=7, progress=False)
    return out


def test_manifest_describes_the_index(tiny_index: Path, tiny_model: Path) -> None:
    m = read_index_manifest(tiny_index, verify=True)
    assert m.count == 40 and m.space.dim == 32 and m.factory == "Flat" and m.metric == "ip"
    assert m.space.sha256 == weights_sha256(tiny_model)
    assert m.encoder.pooling == "mean" and set(m.files) == {"index.faiss", "docs.json", "docs.sqlite"}
    assert not work_dir(tiny_index).exists(), "resume shards are removed after a successful build"


def test_a_document_finds_itself(tiny_index: Path, tiny_model: Path, tiny_beir: Path) -> None:
    index = LoadedIndex.load(tiny_index)
    docs = [json.loads(line) for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    vecs = Tower.from_pretrained(tiny_model).encode([f"{d['title']} {d['text']}" for d in docs[:5]], progress=False)
    scores, rows = index.search(vecs, 3)
    assert [index.ids[r] for r in rows[:, 0]] == [d["_id"] for d in docs[:5]]
    assert np.all(scores[:, 0] > 0.999)


def test_corrupt_index_is_refused(tiny_index: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_index.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "docs.json").write_text('{"ids": []}')
    with pytest.raises(ArtifactError, match=r"checksum mismatch for docs\.json"):
        LoadedIndex.load(bad)


def test_other_factory_strings(tiny_beir: Path, tiny_model: Path, tmp_path: Path) -> None:
    build_index(tiny_beir, str(tiny_model), tmp_path / "hnsw", factory="HNSW8", progress=False)
    assert LoadedIndex.load(tmp_path / "hnsw").index.ntotal == 40
    with pytest.raises(UserError, match="invalid FAISS index factory string"):
        build_index(tiny_beir, str(tiny_model), tmp_path / "bad", factory="NotAnIndex", progress=False)


def _build_cmd(dataset: Path, model: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scalingnote.cli",
        "index",
        "build",
        "--dataset",
        str(dataset),
        "--doc-encoder",
        str(model),
        "--out",
        str(out),
        "--shard-size",
        "1",
        "--batch-size",
        "1",
    ]


def _kill_after_first_shards(cmd: list[str], out: Path, shards: int) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard_dir = work_dir(out) / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(shard_dir.glob("*[0-9].npy"))) < shards:
        assert proc.poll() is None, "build finished before it could be killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_leaves_previous_index_and_rerun_resumes(tiny_beir: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    env_cmd = _build_cmd(tiny_beir, tiny_model, out)
    _kill_after_first_shards(env_cmd, out, shards=3)
    assert not out.exists(), "a killed first build must not leave --out behind"
    done = sorted(p.name for p in (work_dir(out) / "shards").glob("*[0-9].npy"))
    assert 3 <= len(done) < 40
    subprocess.run(env_cmd, check=True, capture_output=True)
    first = read_index_manifest(out, verify=True)
    assert first.count == 40
    assert not work_dir(out).exists()

    # a second, killed build over an existing index leaves the previous one intact and loadable
    _kill_after_first_shards(env_cmd, out, shards=2)
    assert read_index_manifest(out, verify=True).version == first.version
    assert LoadedIndex.load(out).index.ntotal == 40


def test_resume_reuses_shards(
    tiny_beir: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards written by an interrupted run are loaded, not recomputed."""
    out = tmp_path / "index"
    tower = Tower.from_pretrained(tiny_model)
    calls: list[int] = []
    real_encode = tower.encode

    def counting_encode(texts, *args, **kwargs):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_encode(texts, *args, **kwargs)

    monkeypatch.setattr(tower, "encode", counting_encode)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_beir, str(tiny_model), out, shard_size=10, progress=False, tower=tower)
    assert not out.exists() and len(list((work_dir(out) / "shards").glob("*[0-9].npy"))) == 2
    calls.clear()
    build_index(tiny_beir, str(tiny_model), out, shard_size=10, progress=False, tower=tower)
    assert calls == [10, 10], "only the two missing shards are embedded on resume"
    assert read_index_manifest(out).count == 40
