"""A loaded index directory: FAISS index, ordered doc ids and titles, manifest (no torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from pydantic import BaseModel, Field

from scalingnote.artifacts import DOCS_FILE, INDEX_FILE, IndexManifest, read_index_manifest
from scalingnote.errors import ArtifactError
from scalingnote.index.ann_tuning import apply
from scalingnote.index.faiss_backend import prepare_for_search, to_cpu


class Hit(BaseModel):
    """One search result."""

    id: str
    score: float
    title: str | None = Field(None, description="Omitted when the document has no title.")


@dataclass
class LoadedIndex:
    path: Path
    manifest: IndexManifest
    index: faiss.Index
    ids: list[str]
    titles: list[str]

    @classmethod
    def load(cls, path: Path | str, verify: bool = True) -> LoadedIndex:
        """Read and (by default) checksum-verify an index directory."""
        path = Path(path)
        manifest = read_index_manifest(path, verify=verify)
        try:
            index = faiss.read_index(str(path / INDEX_FILE))
            docs = json.loads((path / DOCS_FILE).read_text(encoding="utf-8"))
        except (RuntimeError, OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: unreadable index ({str(exc).splitlines()[0]})") from None
        ids, titles = docs.get("ids", []), docs.get("titles", [])
        if index.ntotal != manifest.count or len(ids) != manifest.count or index.d != manifest.space.dim:
            raise ArtifactError(
                f"{path}: index holds {index.ntotal} vectors of dim {index.d} and {len(ids)} ids, "
                f"manifest says {manifest.count} of dim {manifest.space.dim}"
            )
        if manifest.search is not None:
            apply(index, manifest.search.params)
        return cls(path, manifest, prepare_for_search(index), ids, titles or [""] * len(ids))

    @property
    def dim(self) -> int:
        return self.manifest.space.dim

    @property
    def source(self) -> str:
        return str(self.path)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` scores and row numbers (-1 where fewer than ``k`` exist) for each query vector."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.manifest.count))

    def hits(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` documents of each query vector, best first."""
        scores, rows = self.search(queries, k)
        ids, titles = self.ids, self.titles
        return [
            [Hit(id=ids[r], score=s, title=titles[r] or None) for s, r in zip(srow, rrow, strict=True) if r >= 0]
            for srow, rrow in zip(scores.tolist(), rows.tolist(), strict=True)
        ]

    def vectors(self) -> np.ndarray:
        """Every document vector, in row order (indexes that store them: Flat, HNSW, IVF-Flat)."""
        return to_cpu(self.index).reconstruct_n(0, self.index.ntotal)
