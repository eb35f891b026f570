"""Versioned index roots: ``ROOT/versions/<id>/`` index dirs and a ``ROOT/current`` symlink (no torch).

* A version's id is its manifest's ``version`` and the name of its directory. Hidden names (``.…``) are
  never versions: staging dirs and versions being pruned live there.
* ``current`` is a relative symlink, repointed atomically (new symlink, then ``os.replace``); readers either
  see the old target or the new one. Every file is fsynced before the rename that publishes it.
* Writers (publish, rollback, prune, a rebuild's adoption) hold ``ROOT/.lock`` (``flock``, released by the
  kernel when a writer is killed) for seconds at most. A rebuild embeds into ``ROOT/.next`` (resumable, see
  :mod:`index.build`) holding only ``ROOT/.build.lock`` (one rebuild at a time), then takes ``ROOT/.lock`` to
  rename it into ``versions/`` and repoint ``current``: a rebuild killed at any step leaves ``current`` as it was.
  Rebuilds keep a document-level embedding cache in ``ROOT/.embeddings`` and embed only new or changed texts.
* A rebuild refuses to make current an index of another embedding space than the bundle's (or, without a
  bundle, the current version's) unless forced: pods serving that bundle would refuse it.
* ``SCALINGNOTE_FAILPOINT=set_current`` makes a writer stop itself (``SIGSTOP``) right after repointing
  ``current``, before the directory fsync and the prune: the fault benchmark kills it there, a window too short
  to hit from outside.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from scalingnote.artifacts import (
    DOCS_FILE,
    EmbeddingSpace,
    IndexManifest,
    check_space,
    fsync_dir,
    read_bundle_manifest,
    read_index_manifest,
)
from scalingnote.errors import ArtifactError, SpaceMismatchError, UserError

VERSIONS = "versions"
CURRENT = "current"
NEXT = ".next"
LOCK = ".lock"
EMBEDDINGS = ".embeddings"  # the rebuilds' embedding cache (index.embed_cache); survives successful builds
FAILPOINT_ENV = "SCALINGNOTE_FAILPOINT"
BUILD_LOCK = ".build.lock"
LOCK_POLL_S = 0.05


class LockBusy(UserError):
    """Another writer holds the root's lock and the caller would not wait longer."""


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


def serving_order(root: Path) -> list[str]:
    """Versions a server may start on, best first: ``current``, then the older ones, newest first."""
    versions, cur = list_versions(root), current_version(root)
    older = [v for v in versions if cur is None or v < cur][::-1]
    return ([cur] if cur in versions else []) + older


@contextmanager
def _flock(path: Path, timeout: float | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; wait forever (None) or at most ``timeout`` s (:class:`LockBusy`)."""
    try:
        fh = path.open("a")
    except OSError as exc:
        raise UserError(f"cannot take the lock {path} ({exc.strerror}): is the index root mounted read-only?") from None
    with fh:
        if timeout is None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        else:
            _try_flock(fh, path, time.monotonic() + timeout)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _try_flock(fh: IO[str], path: Path, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockBusy(
                    f"{path.parent} is busy: another writer (a rebuild publishing, publish, rollback) holds "
                    f"{path.name}; try again in a few seconds"
                ) from None
            time.sleep(LOCK_POLL_S)


@contextmanager
def locked(root: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the root's writer lock (waits for it; at most ``timeout`` s when given, else :class:`LockBusy`)."""
    root = Path(root)
    versions_dir(root).mkdir(parents=True, exist_ok=True)
    with _flock(root / LOCK, timeout):
        yield


def _failpoint(name: str) -> None:
    """Stop this process here when ``SCALINGNOTE_FAILPOINT`` names ``name`` (for kill -9 tests)."""
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)


def set_current(root: Path, version: str) -> None:
    """Atomically repoint ``ROOT/current`` at ``versions/<version>`` (caller holds the lock)."""
    root = Path(root)
    version_path(root, version)
    tmp = root / f".{CURRENT}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(Path(VERSIONS) / version, tmp)
    os.replace(tmp, root / CURRENT)
    _failpoint("set_current")
    fsync_dir(root)


def previous_version(root: Path) -> str | None:
    """The newest version older than ``current`` (the rollback target), if any."""
    versions, cur = list_versions(root), current_version(root)
    older = [v for v in versions if cur is None or v < cur]
    return older[-1] if older else None


def rollback(root: Path, version: str | None = None, timeout: float | None = None) -> str:
    """Repoint ``current`` at ``version`` (default: the previous one) after checking its checksums."""
    root = Path(root)
    with locked(root, timeout):
        target = version or previous_version(root)
        if target is None:
            raise UserError(f"{root}: no version older than the current one to roll back to")
        read_index_manifest(version_path(root, target), verify=True)
        set_current(root, target)
    return target


def prune(root: Path, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest versions, never ``current``; returns the deleted ids.

    Each is first renamed to a hidden name (no longer a version, so never a rollback target), then deleted:
    a prune killed half-way leaves a hidden leftover that the next writer removes.
    """
    if keep < 1:
        raise UserError("keep must be >= 1")
    versions, cur = list_versions(root), current_version(root)
    doomed = [v for v in versions[:-keep] if v != cur]
    hidden = [versions_dir(root) / f".{v}.tmp-{uuid.uuid4().hex[:8]}" for v in doomed]
    for version, tmp in zip(doomed, hidden, strict=True):
        os.rename(versions_dir(root) / version, tmp)
    if doomed:
        fsync_dir(versions_dir(root))
    for tmp in hidden:
        shutil.rmtree(tmp)
    return doomed


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _clean_stale(root: Path) -> None:
    """Remove leftovers of killed writers: ``current`` and version staging, half-pruned versions (writer lock)."""
    _remove([*Path(root).glob(f".{CURRENT}.tmp-*"), *versions_dir(root).glob(".*.tmp-*")])


def _fsync_tree(path: Path) -> None:
    """Flush every file under ``path``, then the directories, so a rename of ``path`` publishes durable data."""
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def _adopt(root: Path, built: Path, manifest: IndexManifest, keep: int) -> None:
    """Rename a finished index dir into ``versions/``, repoint ``current`` and prune (caller holds the lock)."""
    final = versions_dir(root) / manifest.version
    if final.exists():
        raise UserError(f"index version {manifest.version} already exists under {versions_dir(root)}")
    _fsync_tree(built)
    os.rename(built, final)
    fsync_dir(versions_dir(root))
    set_current(root, manifest.version)
    prune(root, keep)


def publish_version(index_dir: Path, root: Path, keep: int = 3) -> IndexManifest:
    """Copy a built (checksum-verified) index dir into ``root`` as a new version and make it current.

    Publishing an index whose version is already present makes that version current again (and prunes).
    """
    index_dir, root = Path(index_dir), Path(root)
    manifest = read_index_manifest(index_dir, verify=True)
    with locked(root):
        _clean_stale(root)
        existing = versions_dir(root) / manifest.version
        if existing.is_dir():
            read_index_manifest(existing, verify=True)
            set_current(root, manifest.version)
            prune(root, keep)  # a publish killed before its prune finishes it on the rerun
            return manifest
        tmp = versions_dir(root) / f".{manifest.version}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copytree(index_dir, tmp)
        read_index_manifest(tmp, verify=True)
        _adopt(root, tmp, manifest, keep)
    return manifest


def _target_space(root: Path, bundle: Path | None) -> tuple[EmbeddingSpace, str] | None:
    """The doc space the served bundle targets (``bundle``'s, else the current version's) and its name."""
    if bundle is not None:
        return read_bundle_manifest(bundle).space, f"bundle {bundle}"
    if current_version(root) is None:
        return None
    return read_index_manifest(current_path(root)).space, f"the current version of {root}"


def _current_ids(root: Path) -> list[str] | None:
    """The document ids of the current version (None without one)."""
    if current_version(root) is None:
        return None
    return json.loads((current_path(root) / DOCS_FILE).read_text(encoding="utf-8"))["ids"]


def _current_has_bm25(root: Path) -> bool:
    """Whether the current version holds a BM25 index (so /search offers the bm25 and hybrid modes)."""
    from scalingnote.index.lexical import BM25_DIR

    if current_version(root) is None:
        return False
    return any(name.startswith(f"{BM25_DIR}/") for name in read_index_manifest(current_path(root)).files)


def check_rebuild_space(root: Path, doc_encoder: str, bundle: Path | None = None) -> None:
    """Refuse (before embedding) a doc tower whose space is not the one the served bundle targets."""
    from scalingnote.specs import doc_space, resolve

    target = _target_space(root, bundle)
    if target is None:
        return
    try:
        check_space(target[0], doc_space(resolve(doc_encoder)), what=target[1])
    except SpaceMismatchError as exc:
        raise SpaceMismatchError(f"refusing to make it current: {exc} (pass --force to publish it anyway)") from None


def rebuild(
    root: Path,
    dataset: Path,
    doc_encoder: str,
    keep: int = 3,
    bundle: Path | None = None,
    force: bool = False,
    embed_cache: bool = True,
    before_adopt: Callable[[Path], object] | None = None,
    bm25: bool | None = None,
    **build_kwargs: object,
) -> IndexManifest:
    """Build a new version with :func:`index.build.build_index` (torch) and make it current.

    Embedding runs under ``ROOT/.build.lock`` only; ``ROOT/.lock`` is held just to adopt the result.
    ``embed_cache``: reuse the vectors of unchanged documents from ``ROOT/.embeddings`` (and add the new ones).
    ``bm25``: write a BM25 index too; None keeps what the current version has, so a routine rebuild never takes
    the bm25 and hybrid modes away from the clients of a running service.
    ``before_adopt``: called with the built index dir before it is adopted (e.g. to write its Milvus collection).
    """
    from scalingnote.index.build import build_index

    root = Path(root)
    versions_dir(root).mkdir(parents=True, exist_ok=True)
    with _flock(root / BUILD_LOCK, None):
        if not force:
            check_rebuild_space(root, doc_encoder, bundle)
        _remove(list(root.glob(f".{NEXT}.tmp-*")))  # staging of a killed rebuild (never ..next.partial)
        manifest = build_index(
            dataset,
            doc_encoder,
            root / NEXT,
            embed_cache=root / EMBEDDINGS if embed_cache else None,
            previous_ids=_current_ids(root),
            bm25=_current_has_bm25(root) if bm25 is None else bm25,
            **build_kwargs,  # type: ignore[arg-type]
        )
        if before_adopt is not None:
            before_adopt(root / NEXT)
        with locked(root):
            _clean_stale(root)
            _adopt(root, root / NEXT, manifest, keep)
    return manifest
