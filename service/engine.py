"""The search engine: a bundle's ONNX query encoder plus the current index generation (no torch).

An index generation is swapped in only after it has loaded, passed its checksums, matched the bundle's
embedding space and answered a self-check query. Each batch leases the generation it started on; a
replaced generation is released when its last lease ends, so in-flight requests finish on the old index.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scalingnote.artifacts import check_space, read_bundle_manifest, read_index_manifest
from scalingnote.errors import ArtifactError, UserError
from scalingnote.index import versions
from scalingnote.index.backend import SearchIndex
from scalingnote.index.query import SearchSpec
from scalingnote.index.store import Hit, LoadedIndex
from scalingnote.runtime.bundle import BundleEncoder
from scalingnote.service.settings import Settings

log = logging.getLogger("scalingnote.service")

SELF_CHECK_QUERY = "what is the effect of exercise on blood pressure"
OPEN_ERRORS = (UserError, OSError, RuntimeError, ValueError)  # what a broken index dir makes loading raise


Spec = SearchSpec | None  # what a text asks: a search, or (None) only its embedding


@dataclass
class BatchOutput:
    """Per text: hits (none for an embedding-only text), whether it was truncated, its query vector and its
    token count; plus the index version that answered and the batch's stage times in seconds (tokenize, encode,
    search)."""

    hits: list[list[Hit]]
    truncated: list[bool]
    version: str
    stages: dict[str, float] = field(default_factory=dict)
    vectors: np.ndarray | None = None
    tokens: list[int] = field(default_factory=list)


@dataclass(eq=False)
class Generation:
    """One loaded index version."""

    index: SearchIndex | None
    version: str
    name: str
    docs: int
    leases: int = 0
    retired: bool = False
    released: threading.Event = field(default_factory=threading.Event)


class Engine:
    """Encoder + current index generation; thread-safe swap with lease counting."""

    def __init__(self, encoder: BundleEncoder, index_path: Path, verify: bool = True, lock_timeout: float = 1.0):
        self.encoder = encoder
        self.index_path = Path(index_path)
        self.is_root = versions.is_root(self.index_path)
        self.verify = verify
        self.lock_timeout = lock_timeout
        self._lock = threading.Lock()
        self._current = self._open_serving() if self.is_root else self.open(self.index_path)

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        """Load bundle and index named by ``settings``; raises :class:`UserError` with a clear message."""
        if settings.bundle is None:
            raise UserError("no model bundle: pass --bundle or set SCALINGNOTE_BUNDLE")
        if settings.backend == "milvus":
            from scalingnote.service.milvus_engine import MilvusEngine

            return MilvusEngine.from_settings(settings)
        if settings.index_root is None:
            raise UserError("no index: pass --index or set SCALINGNOTE_INDEX_ROOT")
        index_path = Path(settings.index_root)
        if not versions.is_root(index_path):  # a static index: check its space before loading the ONNX graph
            encoder_space = read_bundle_manifest(settings.bundle).space
            check_space(encoder_space, read_index_manifest(index_path).space, what=f"bundle {settings.bundle}")
        return cls(bundle_encoder(settings), index_path, settings.verify_checksums, settings.lock_timeout_s)

    def _open_serving(self) -> Generation:
        """The first valid version of :func:`versions.serving_order` (``current``, else the newest older one)."""
        skipped: dict[str, str] = {}
        for version in versions.serving_order(self.index_path):
            try:
                gen = self.open(versions.version_path(self.index_path, version))
            except OPEN_ERRORS as exc:
                log.warning("skipping index version %s: %s", version, exc)
                skipped[version] = str(exc)
                continue
            if skipped:
                log.warning("serving index version %s (skipped %s)", version, ", ".join(skipped))
            return gen
        if not skipped:
            raise ArtifactError(f"{self.index_path} has no index version yet: run `scalingnote index rebuild`")
        raise UserError(f"{next(iter(skipped.values()))}; no valid older version under {self.index_path} either")

    @property
    def current(self) -> Generation:
        return self._current

    @property
    def follows(self) -> bool:
        """Whether there is a pointer to follow and versions to roll back to (an index root)."""
        return self.is_root

    def available_versions(self) -> list[str]:
        """The versions one may reload or roll back to, oldest first."""
        return versions.list_versions(self.index_path) if self.is_root else []

    def _target(self, version: str | None) -> Path:
        if not self.is_root:
            if version is not None:
                raise UserError(f"{self.index_path} is a static index directory: it has no versions")
            return self.index_path
        return versions.version_path(self.index_path, version) if version else versions.current_path(self.index_path)

    def open(self, path: Path) -> Generation:
        """Load, verify, space-check and self-check the index at ``path`` (does not serve it yet)."""
        manifest = read_index_manifest(path)
        check_space(self.encoder.manifest.space, manifest.space, what=f"bundle {self.encoder.path}")
        index = LoadedIndex.load(path, verify=self.verify)
        self.self_check(index)
        return Generation(index, manifest.version, Path(path).name, manifest.count)

    def self_check(self, index: SearchIndex) -> None:
        """Encode a fixed query and search ``index``: finite unit vector of the right dim, valid top hit."""
        vectors, _ = self.encoder.encode_with_flags([SELF_CHECK_QUERY])
        if vectors.shape != (1, index.dim) or not np.isfinite(vectors).all():
            raise ArtifactError(f"self-check failed: query vector of shape {vectors.shape} is not finite/dim")
        if self.encoder.manifest.encoder.normalize and abs(float(np.linalg.norm(vectors)) - 1.0) > 1e-3:
            raise ArtifactError("self-check failed: the bundle's query vector is not L2-normalised")
        if index.manifest.count == 0:
            raise ArtifactError(f"self-check failed: {index.source} holds no documents")
        (top,) = index.hits(vectors, 1)
        if len(top) != 1 or not np.isfinite(top[0].score):
            raise ArtifactError(f"self-check failed: {index.source} returned no valid hit")

    @contextmanager
    def lease(self) -> Iterator[Generation]:
        """The current generation, kept alive until the block ends even if it is swapped out meanwhile."""
        with self._lock:
            gen = self._current
            gen.leases += 1
        try:
            yield gen
        finally:
            with self._lock:
                gen.leases -= 1
                if gen.retired and gen.leases == 0:
                    self._release(gen)

    def swap(self, gen: Generation) -> Generation:
        """Serve ``gen`` from the next batch on; returns the retired generation."""
        with self._lock:
            old, self._current = self._current, gen
            old.retired = True
            if old.leases == 0:
                self._release(old)
        log.info("index swapped: %s -> %s (%d docs)", old.version, gen.version, gen.docs)
        return old

    @staticmethod
    def _release(gen: Generation) -> None:
        gen.index = None
        gen.released.set()
        log.info("index %s released", gen.version)

    def reload(self, version: str | None = None) -> tuple[Generation, Generation] | None:
        """Swap to ``version`` (default: what ``current`` points to now); None when already serving it.

        Raises :class:`UserError` (old generation keeps serving) when the target is corrupt or mismatched,
        or (:class:`versions.LockBusy`) when an explicit version cannot take the root's lock promptly.
        With an explicit version on an index root, ``current`` is repointed to it after it loaded.
        """
        path = self._target(version)
        if version is None:
            if path.name == self._current.name:
                return None
            gen = self.open(path)
        else:
            with versions.locked(self.index_path, self.lock_timeout):
                gen = self.open(path)
                versions.set_current(self.index_path, version)
        return self.swap(gen), gen

    def rollback(self) -> tuple[Generation, Generation]:
        """Repoint ``current`` at the previous version and serve it (target chosen under the root's lock)."""
        if not self.is_root:
            raise UserError(f"{self.index_path} is a static index directory: nothing to roll back to")
        with versions.locked(self.index_path, self.lock_timeout):
            target = versions.previous_version(self.index_path)
            if target is None:
                raise UserError(f"{self.index_path}: no version older than the current one to roll back to")
            gen = self.open(versions.version_path(self.index_path, target))
            versions.set_current(self.index_path, target)
        return self.swap(gen), gen

    def watch_target(self) -> str | None:
        """Name of the version ``current`` points to (None for a static index)."""
        return versions.current_version(self.index_path) if self.is_root else None

    def run_batch(self, texts: list[str], specs: int | Sequence[int | Spec]) -> BatchOutput:
        """Encode ``texts`` in one ONNX call and search them: top ``specs`` hits for every text, or as
        ``specs[i]`` asks for ``texts[i]`` (a k, a :class:`SearchSpec`, or None for the embedding alone)."""
        wanted = [specs] * len(texts) if isinstance(specs, int) else list(specs)
        with self.lease() as gen:
            index = gen.index
            assert index is not None  # a leased generation is never released
            enc = self.encoder.encode_timed(texts)
            encoded = time.perf_counter()
            hits = hits_for(index, enc.vectors, texts, [SearchSpec(s) if isinstance(s, int) else s for s in wanted])
            stages = enc.seconds | {"search": time.perf_counter() - encoded}
            return BatchOutput(hits, enc.truncated, gen.version, stages, enc.vectors, enc.tokens)


def bundle_encoder(settings: Settings) -> BundleEncoder:
    """The ONNX query encoder of ``settings.bundle`` (checked not None by the caller)."""
    assert settings.bundle is not None
    return BundleEncoder(
        settings.bundle,
        settings.variant,
        settings.ort_threads,
        settings.verify_checksums,
        settings.ort_spin,
        settings.length_groups,
    )


def hits_for(index: SearchIndex, vectors: np.ndarray, texts: list[str], specs: list[Spec]) -> list[list[Hit]]:
    """The hits each spec asks for. Plain dense searches take one batched search per distinct k, over only the
    queries that asked for it (a large k costs only its own); the others (filters, fields, bm25, hybrid) go to
    the index's :meth:`~SearchIndex.query` together."""
    hits: list[list[Hit]] = [[] for _ in specs]
    plain: dict[int, list[int]] = {}
    other: dict[int, SearchSpec] = {}
    for row, spec in enumerate(specs):
        if spec is None:
            continue
        if spec.plain(index.default_mode):
            plain.setdefault(spec.k, []).append(row)
        else:
            other[row] = spec
    if other:
        answered = index.query(vectors[list(other)], [texts[r] for r in other], list(other.values()))
        for row, found in zip(other, answered, strict=True):
            hits[row] = found
    for k in sorted(plain):
        rows = plain[k]
        for row, found in zip(rows, index.hits(vectors[rows], k), strict=True):
            hits[row] = found
    return hits
