"""A document-level embedding cache: vectors keyed by (doc tower and encoder config, document text).

Rebuilds embed only the documents whose text is new; every other vector comes from here. The cache is a
directory per doc-tower key (``<cache>/<key>/``) of append-only parts, ``NNNNNN.npy`` (float32 [n, dim]) and
``NNNNNN.keys`` (one text hash per row), each written to a temporary name and renamed, so a killed build
loses at most the part it was writing. A key holds one doc tower's weights hash, its encoder config (max
length, pooling) and the dtype, so a retrained tower or a new length never reuses old vectors.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

COMPACT_RATIO = 2.0  # rewrite a key's parts once they hold this many times the rows the last build used


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """The cached vectors of one doc tower (``key``) under ``root``."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self._where: dict[str, tuple[Path, int]] = {}
        for keys in sorted(self.dir.glob("[0-9]*.keys")):
            for row, h in enumerate(keys.read_text(encoding="ascii").split()):
                self._where[h] = (keys.with_suffix(".npy"), row)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, h: str) -> bool:
        return h in self._where

    def get(self, hashes: list[str]) -> np.ndarray:
        """The cached vectors of ``hashes`` (all must be present), in order."""
        by_file: dict[Path, list[tuple[int, int]]] = {}
        for i, h in enumerate(hashes):
            path, row = self._where[h]
            by_file.setdefault(path, []).append((i, row))
        out: np.ndarray | None = None
        for path, pairs in by_file.items():
            part = np.load(path, mmap_mode="r")
            if out is None:
                out = np.empty((len(hashes), part.shape[1]), dtype=np.float32)
            idx, rows = zip(*pairs, strict=True)
            out[list(idx)] = part[list(rows)]
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def add(self, hashes: list[str], vectors: np.ndarray) -> Path | None:
        """Append a part (atomically) holding ``vectors`` under ``hashes``; returns its ``.npy`` (None: empty)."""
        if not hashes:
            return None
        n = max((int(p.stem) for p in self.dir.glob("[0-9]*.npy")), default=-1) + 1
        npy, keys = self.dir / f"{n:06d}.npy", self.dir / f"{n:06d}.keys"
        tmp = self.dir / f".{n:06d}.{os.getpid()}.tmp.npy"
        np.save(tmp, np.ascontiguousarray(vectors, dtype=np.float32))
        os.replace(tmp, npy)
        tmp_keys = keys.with_name(f".{keys.name}.{os.getpid()}.tmp")
        tmp_keys.write_text("\n".join(hashes) + "\n", encoding="ascii")
        os.replace(tmp_keys, keys)  # the keys file makes the part visible: written last
        for row, h in enumerate(hashes):
            self._where[h] = (npy, row)
        return npy

    def compact(self, used: list[str]) -> bool:
        """Keep only ``used`` (the last build's documents) once the parts hold ``COMPACT_RATIO``× as many rows."""
        if len(self._where) <= COMPACT_RATIO * max(1, len(set(used))):
            return False
        keep = list(dict.fromkeys(h for h in used if h in self._where))
        vectors = self.get(keep)
        old = sorted(self.dir.glob("[0-9]*.*"))
        part = self.add(keep, vectors)
        fresh = set() if part is None else {part, part.with_suffix(".keys")}
        for path in old:  # sorted: a part's .keys (what makes it visible) goes before its .npy
            if path not in fresh:
                path.unlink()
        self._where = {h: self._where[h] for h in keep}
        return True
