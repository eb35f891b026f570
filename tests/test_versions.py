"""Versioned index roots: publish, atomic `current` swap, prune, rebuild, and a SIGKILLed rebuild."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalingnote.artifacts import read_index_manifest
from scalingnote.errors import ArtifactError, UserError
from scalingnote.index import versions
from scalingnote.index.build import work_dir
from scalingnote.index.store import LoadedIndex
from tests.conftest import Space, index_root, write_corpus


def _copy_as_new_version(index: Path, dest: Path, version: str) -> Path:
    """A copy of ``index`` whose manifest carries another version id (same vectors)."""
    shutil.copytree(index, dest)
    manifest = read_index_manifest(dest)
    (dest / "manifest.json").write_text(manifest.model_copy(update={"version": version}).model_dump_json())
    return dest


def test_publish_makes_a_version_current(tiny: Space, tmp_path: Path) -> None:
    root = index_root(tmp_path / "root", tiny.index)
    version = read_index_manifest(tiny.index).version
    assert versions.is_root(root) and not versions.is_root(tiny.index)
    assert versions.list_versions(root) == [version] and versions.current_version(root) == version
    assert (root / "current").is_symlink() and not Path(os.readlink(root / "current")).is_absolute()
    assert LoadedIndex.load(versions.current_path(root)).ids == LoadedIndex.load(tiny.index).ids
    versions.publish_version(tiny.index, root)  # the same version again: idempotent
    assert versions.list_versions(root) == [version]


def test_publish_refuses_a_corrupt_index_and_keeps_current(tiny: Space, tmp_path: Path) -> None:
    root = index_root(tmp_path / "root", tiny.index)
    before = versions.current_version(root)
    bad = _copy_as_new_version(tiny.index, tmp_path / "bad", "29990101T000000Z-bad000")
    (bad / "index.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        versions.publish_version(bad, root)
    assert versions.current_version(root) == before and versions.list_versions(root) == [before]


def test_prune_keeps_newest_and_current_and_previous_is_the_rollback_target(tiny: Space, tmp_path: Path) -> None:
    ids = [f"2026010{i}T000000Z-aaaaa{i}" for i in range(1, 6)]
    copies = [_copy_as_new_version(tiny.index, tmp_path / v, v) for v in ids]
    root = index_root(tmp_path / "root", *copies[:4])
    assert versions.list_versions(root) == ids[1:4], "keep=3 by default"
    with versions.locked(root):
        versions.set_current(root, ids[1])
    assert versions.previous_version(root) is None
    versions.publish_version(copies[4], root, keep=2)
    assert versions.current_version(root) == ids[4]
    assert versions.list_versions(root) == [ids[3], ids[4]]
    assert versions.previous_version(root) == ids[3]
    with versions.locked(root):
        versions.set_current(root, ids[3])
    assert versions.prune(root, keep=1) == [] and versions.list_versions(root) == [ids[3], ids[4]], "current stays"
    with pytest.raises(UserError, match="not found"):
        versions.version_path(root, "nope")
    with pytest.raises(UserError, match="invalid index version"):
        versions.version_path(root, "../x")


def _rebuild_cmd(corpus: Path, model: Path, root: Path, shard_size: int) -> list[str]:
    return [
        sys.executable, "-m", "scalingnote.cli", "index", "rebuild", "--dataset", str(corpus), "--doc-encoder",
        str(model), "--root", str(root), "--shard-size", str(shard_size), "--batch-size", str(shard_size),
    ]  # fmt: skip


def test_rebuild_swaps_current_and_a_sigkilled_rebuild_leaves_it(tiny: Space, tmp_path: Path) -> None:
    root = index_root(tmp_path / "root", tiny.index)
    old = versions.current_version(root)
    cmd = _rebuild_cmd(write_corpus(tmp_path / "corpus", 40, seed=5), tiny.model, root, shard_size=1)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = work_dir(root / versions.NEXT) / "shards"
    deadline = time.monotonic() + 120
    while len(list(shards.glob("*[0-9].npy"))) < 3:
        assert proc.poll() is None, "rebuild finished before it could be killed"
        assert time.monotonic() < deadline, "rebuild wrote no shard in 120 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(list(shards.glob("*[0-9].npy"))) < 40, "killed half-way"
    assert versions.current_version(root) == old and versions.list_versions(root) == [old]
    assert LoadedIndex.load(versions.current_path(root)).manifest.count == 200

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    new = versions.current_version(root)
    assert new != old and versions.list_versions(root) == [old, new]
    assert LoadedIndex.load(versions.current_path(root)).manifest.count == 40
    assert not work_dir(root / versions.NEXT).exists() and not (root / versions.NEXT).exists()
    assert not list(root.glob(".*.tmp-*")), "no staging leftovers"


def test_rebuild_keeps_the_current_versions_bm25_unless_told(tiny: Space, tmp_path: Path) -> None:
    """A routine rebuild (no --bm25/--no-bm25) keeps the bm25 and hybrid modes that clients of the current version
    use; an explicit choice wins, and a root without BM25 stays without."""
    from scalingnote.index.build import build_index

    build_index(tiny.corpus, str(tiny.model), tmp_path / "with-bm25", progress=False, bm25=True)
    root = index_root(tmp_path / "root", tmp_path / "with-bm25")
    corpus = write_corpus(tmp_path / "corpus", 30, seed=7)

    def has_bm25() -> bool:
        return LoadedIndex.load(versions.current_path(root)).lexical is not None

    assert has_bm25()
    versions.rebuild(root, corpus, str(tiny.model), progress=False)
    assert has_bm25(), "the default keeps BM25"
    versions.rebuild(root, corpus, str(tiny.model), bm25=False, progress=False)
    assert not has_bm25(), "--no-bm25 drops it"
    versions.rebuild(root, corpus, str(tiny.model), progress=False)
    assert not has_bm25(), "the default follows a current version without BM25"
    versions.rebuild(root, corpus, str(tiny.model), bm25=True, progress=False)
    assert has_bm25()
