"""Versioned index roots: ``ROOT/versions/<id>/`` index dirs and a ``ROOT/current`` symlink (no torch).

* A version's id is its manifest's ``version`` and the name of its directory.
* ``current`` is a relative symlink, repointed atomically (new symlink, then ``os.replace``); readers either
  see the old target or the new one.
* Writers (rebuild, publish, rollback, prune) hold ``ROOT/.lock`` (``flock``, released by the kernel when a
  writer is killed). A rebuild builds into ``ROOT/.next`` (resumable, see :mod:`index.build`), renames it
  into ``versions/`` and only then repoints ``current``: a rebuild killed at any step leaves ``current`` as
  it was.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scalingnote.artifacts import IndexManifest, fsync_dir, read_index_manifest
from scalingnote.errors import ArtifactError, UserError

VERSIONS = "versions"
CURRENT = "current"
NEXT = ".next"
LOCK = ".lock"


def is_root(path: Path) -> bool:
    """Whether ``path`` is a versioned index root (as opposed to a plain index directory)."""
    path = Path(path)
    return (path / VERSIONS).is_dir() or (path / CURRENT).is_symlink()


def versions_dir(root: Path) -> Path:
    return Path(root) / VERSIONS


def list_versions(root: Path) -> list[str]:
    """Version ids, oldest first (ids sort by creation time); hidden and partial entries are skipped."""
    vdir = versions_dir(root)
    if not vdir.is_dir():
        return []
    return sorted(p.name for p in vdir.iterdir() if p.is_dir() and not p.name.startswith("."))


def current_version(root: Path) -> str | None:
    """The version ``current`` points to, or None when there is none yet."""
    link = Path(root) / CURRENT
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def version_path(root: Path, version: str) -> Path:
    """Directory of ``version``; raises :class:`UserError` for an unknown or malformed id."""
    if not version or version.startswith(".") or "/" in version or "\\" in version:
        raise UserError(f"invalid index version id {version!r}")
    path = versions_dir(root) / version
    if not path.is_dir():
        have = ", ".join(list_versions(root)) or "none"
        raise UserError(f"index version {version!r} not found under {versions_dir(root)} (have: {have})")
    return path


def current_path(root: Path) -> Path:
    """Resolved directory of the current version."""
    version = current_version(root)
    if version is None:
        raise ArtifactError(f"{root} has no '{CURRENT}' version yet: run `scalingnote index rebuild` or `publish`")
    return version_path(root, version)


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the root's writer lock (blocks while another rebuild/publish/rollback runs)."""
    root = Path(root)
    versions_dir(root).mkdir(parents=True, exist_ok=True)
    with (root / LOCK).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def set_current(root: Path, version: str) -> None:
    """Atomically repoint ``ROOT/current`` at ``versions/<version>`` (caller holds the lock)."""
    root = Path(root)
    version_path(root, version)
    tmp = root / f".{CURRENT}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(Path(VERSIONS) / version, tmp)
    os.replace(tmp, root / CURRENT)
    fsync_dir(root)


def previous_version(root: Path) -> str | None:
    """The newest version older than ``current`` (the rollback target), if any."""
    versions, cur = list_versions(root), current_version(root)
    older = [v for v in versions if cur is None or v < cur]
    return older[-1] if older else None


def prune(root: Path, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest versions, never ``current``; returns the deleted ids."""
    if keep < 1:
        raise UserError("keep must be >= 1")
    versions, cur = list_versions(root), current_version(root)
    doomed = [v for v in versions[:-keep] if v != cur]
    for version in doomed:
        shutil.rmtree(versions_dir(root) / version)
    return doomed


def _clean_stale(root: Path) -> None:
    """Remove staging leftovers of killed writers (never the resumable ``..next.partial`` work dir)."""
    for parent in (Path(root), versions_dir(root)):
        for p in parent.glob(".*.tmp-*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _adopt(root: Path, built: Path, manifest: IndexManifest, keep: int) -> None:
    """Rename a finished index dir into ``versions/``, repoint ``current`` and prune (caller holds the lock)."""
    final = versions_dir(root) / manifest.version
    if final.exists():
        raise UserError(f"index version {manifest.version} already exists under {versions_dir(root)}")
    os.rename(built, final)
    fsync_dir(versions_dir(root))
    set_current(root, manifest.version)
    prune(root, keep)


def publish_version(index_dir: Path, root: Path, keep: int = 3) -> IndexManifest:
    """Copy a built (checksum-verified) index dir into ``root`` as a new version and make it current.

    Publishing an index whose version is already present just makes that version current again.
    """
    index_dir, root = Path(index_dir), Path(root)
    manifest = read_index_manifest(index_dir, verify=True)
    with locked(root):
        _clean_stale(root)
        existing = versions_dir(root) / manifest.version
        if existing.is_dir():
            read_index_manifest(existing, verify=True)
            set_current(root, manifest.version)
            return manifest
        tmp = versions_dir(root) / f".{manifest.version}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copytree(index_dir, tmp)
        read_index_manifest(tmp, verify=True)
        _adopt(root, tmp, manifest, keep)
    return manifest


def rebuild(root: Path, dataset: Path, doc_encoder: str, keep: int = 3, **build_kwargs: object) -> IndexManifest:
    """Build a new version with :func:`index.build.build_index` (torch) and make it current."""
    from scalingnote.index.build import build_index

    root = Path(root)
    with locked(root):
        _clean_stale(root)
        manifest = build_index(dataset, doc_encoder, root / NEXT, **build_kwargs)  # type: ignore[arg-type]
        _adopt(root, root / NEXT, manifest, keep)
    return manifest
