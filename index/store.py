"""A loaded index directory: FAISS index, ordered doc ids and titles, manifest (no torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index.faiss_backend import prepare_for_search
from scalingnote.artifacts import IndexManifest, read_index_manifest
from scalingnote.errors import ArtifactError

INDEX_FILE = "index.faiss"
DOCS_FILE = "docs.json"


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
        if index.ntotal != manifest.count or len(ids) != manifest.count or index.d != manifest.doc_tower.dim:
            raise ArtifactError(
                f"{path}: index holds {index.ntotal} vectors of dim {index.d} and {len(ids)} ids, "
                f"manifest says {manifest.count} of dim {manifest.doc_tower.dim}"
            )
        return cls(path, manifest, prepare_for_search(index), ids, titles or [""] * len(ids))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` scores and row numbers (-1 where fewer than ``k`` exist) for each query vector."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.manifest.count))
