"""Faults of issue #10 in index roots: embedding-space guard on rebuild, fsync before publish, killed prune."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from scalingnote.artifacts import read_index_manifest
from scalingnote.errors import SpaceMismatchError
from scalingnote.index import versions
from scalingnote.index.build import work_dir
from tests.conftest import SCALINGNOTE, Space, index_root, run_cli, server_env, write_corpus


def copy_as_version(index: Path, dest: Path, version: str) -> Path:
    """A copy of ``index`` whose manifest carries another version id (same vectors, same space)."""
    shutil.copytree(index, dest)
    manifest = read_index_manifest(dest)
    (dest / "manifest.json").write_text(manifest.model_copy(update={"version": version}).model_dump_json())
    return dest


def test_rebuild_refuses_a_doc_tower_of_another_space_unless_forced(
    tiny: Space, other_space: Space, tmp_path: Path
) -> None:
    root = index_root(tmp_path / "root", tiny.index)
    before = versions.current_version(root)
    corpus = write_corpus(tmp_path / "corpus", 30, seed=4)
    for bundle in (None, tiny.bundle):  # the current version's space, or the served bundle's
        with pytest.raises(SpaceMismatchError, match=r"different embedding spaces.*--force"):
            versions.rebuild(root, corpus, str(other_space.model), bundle=bundle, progress=False)
    assert versions.current_version(root) == before and versions.list_versions(root) == [before]
    next_dir = root / versions.NEXT
    assert not next_dir.exists() and not work_dir(next_dir).exists(), "refused before embedding"

    cmd = [str(SCALINGNOTE), "index", "rebuild", "--dataset", str(corpus), "--doc-encoder", str(other_space.model),
           "--root", str(root)]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=server_env(bundle=tiny.bundle), check=False
    )
    assert proc.returncode == 2 and "--force" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert "Traceback" not in proc.stderr and versions.current_version(root) == before

    forced = versions.rebuild(root, corpus, str(other_space.model), force=True, progress=False)
    assert versions.current_version(root) == forced.version != before


def test_publish_fsyncs_every_file_before_the_rename(tiny: Space, tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst, *args, **kwargs) -> None:
        events.append(("rename", os.path.realpath(src)))
        real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    index_root(tmp_path / "root", tiny.index)
    (adopt,) = [i for i, (kind, src) in enumerate(events) if kind == "rename" and "/versions/." in src]
    staged = events[adopt][1]
    synced = {path for kind, path in events[:adopt] if kind == "fsync"}
    expected = {staged} | {f"{staged}/{name}" for name in ("index.faiss", "docs.json", "manifest.json")}
    assert expected <= synced, f"not fsynced before the publish rename: {expected - synced}"


class Killed(BaseException):
    """Stands in for SIGKILL half-way through a delete."""


def test_a_killed_prune_leaves_no_half_deleted_version(tiny: Space, tmp_path: Path, monkeypatch) -> None:
    ids = [f"2000010{i}T000000Z-aaaaa{i}" for i in range(1, 4)]
    copies = [copy_as_version(tiny.index, tmp_path / v, v) for v in ids]
    root = index_root(tmp_path / "root", *copies)
    assert versions.list_versions(root) == ids and versions.current_version(root) == ids[2]

    def killed_rmtree(path, *args, **kwargs) -> None:
        (Path(path) / "index.faiss").unlink()
        raise Killed

    monkeypatch.setattr(shutil, "rmtree", killed_rmtree)
    with pytest.raises(Killed):
        versions.prune(root, keep=2)
    monkeypatch.undo()
    assert versions.list_versions(root) == ids[1:], "the half-deleted version is no version"
    assert versions.previous_version(root) == ids[1], "so never the rollback target"
    assert len(list(versions.versions_dir(root).glob(".*"))) == 1, "a hidden leftover"
    versions.publish_version(copies[2], root)  # the next writer cleans it up
    assert not list(versions.versions_dir(root).glob(".*")) and versions.list_versions(root) == ids[1:]


def test_index_rollback_repoints_current_without_a_server(tiny: Space, tmp_path: Path) -> None:
    ids = ["20000101T000000Z-aaaaa1", "20000102T000000Z-bbbbb2"]
    root = index_root(tmp_path / "root", *(copy_as_version(tiny.index, tmp_path / v, v) for v in ids))
    proc = run_cli("index", "rollback", "--root", str(root), timeout=120)
    assert proc.returncode == 0 and ids[0] in proc.stdout, proc.stderr
    assert versions.current_version(root) == ids[0]
    proc = run_cli("index", "rollback", "--root", str(root), timeout=120)
    assert proc.returncode == 2 and "no version older" in proc.stderr
    assert versions.rollback(root, ids[1]) == ids[1] == versions.current_version(root)


def _stopped(pid: int, timeout: float = 120) -> bool:
    """Wait until ``pid`` has stopped itself (state T)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return True
        time.sleep(0.05)
    return False


def test_a_publish_killed_just_after_repointing_current_leaves_it_valid(tiny: Space, tmp_path: Path) -> None:
    ids = ["20000101T000000Z-aaaaa1", "20000102T000000Z-bbbbb2", "20000103T000000Z-ccccc3"]
    copies = [copy_as_version(tiny.index, tmp_path / v, v) for v in ids]
    root = index_root(tmp_path / "root", *copies[:2])
    cmd = [str(SCALINGNOTE), "index", "publish", "--index", str(copies[2]), "--root", str(root), "--keep", "1"]
    proc = subprocess.Popen(cmd, env=server_env(failpoint="set_current"), stderr=subprocess.DEVNULL)
    try:
        assert _stopped(proc.pid), "the writer never reached the failpoint"
        proc.kill()
    finally:
        proc.wait(30)
    assert versions.current_version(root) == ids[2], "killed after the repoint"
    assert versions.list_versions(root) == ids, "and before the prune"
    read_index_manifest(versions.current_path(root), verify=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=server_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    assert versions.list_versions(root) == ids[2:] == [versions.current_version(root)]
