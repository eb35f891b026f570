"""A loaded index directory: FAISS index, ordered doc ids and titles, manifest, and where the build wrote them, the
document store (filters, fields) and the BM25 index (lexical and hybrid modes). No torch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from pydantic import BaseModel, Field

from scalingnote.artifacts import DOCS_FILE, INDEX_FILE, IndexManifest, read_index_manifest
from scalingnote.errors import ArtifactError, UserError
from scalingnote.index import fusion
from scalingnote.index.ann_tuning import apply
from scalingnote.index.docstore import DOCSTORE_FILE, DocStore, Filter
from scalingnote.index.faiss_backend import prepare_for_search, to_cpu
from scalingnote.index.lexical import BM25_DIR, Lexical
from scalingnote.index.query import HYBRID_DEPTH, Mode, SearchSpec


class Hit(BaseModel):
    """One search result."""

    id: str
    score: float
    title: str | None = Field(None, description="Omitted when the document has no title.")
    fields: dict[str, Any] | None = Field(None, description="The asked `fields` the document has (when asked).")


@dataclass
class LoadedIndex:
    path: Path
    manifest: IndexManifest
    index: faiss.Index
    ids: list[str]
    titles: list[str]
    docstore: DocStore | None = None
    lexical: Lexical | None = None

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
        docstore = DocStore(path / DOCSTORE_FILE) if DOCSTORE_FILE in manifest.files else None
        lexical = Lexical.load(path) if any(f.startswith(f"{BM25_DIR}/") for f in manifest.files) else None
        if lexical is not None and lexical.count != manifest.count:
            raise ArtifactError(f"{path}: BM25 index holds {lexical.count} documents, manifest says {manifest.count}")
        return cls(path, manifest, prepare_for_search(index), ids, titles or [""] * len(ids), docstore, lexical)

    @property
    def dim(self) -> int:
        return self.manifest.space.dim

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def modes(self) -> tuple[Mode, ...]:
        return ("dense", "bm25", "hybrid") if self.lexical is not None else ("dense",)

    @property
    def default_mode(self) -> Mode:
        return "hybrid" if self.lexical is not None else "dense"

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` scores and row numbers (-1 where fewer than ``k`` exist) for each query vector; only among
        ``rows`` (sorted row numbers, through a FAISS ``IDSelector``) when given."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.manifest.count)
        if rows is None:
            return self.index.search(queries, k)
        if len(rows) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        selector = faiss.IDSelectorBatch(len(rows), faiss.swig_ptr(np.ascontiguousarray(rows, dtype=np.int64)))
        return self.index.search(queries, k, params=faiss.SearchParameters(sel=selector))

    def hits(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` documents of each query vector, best first."""
        ids, titles = self.ids, self.titles
        return [
            [Hit(id=ids[r], score=s, title=titles[r] or None) for r, s in ranking]
            for ranking in self._ranked(*self.search(queries, k))
        ]

    @cached_property
    def _rows_by_id(self) -> dict[str, int]:
        return {doc_id: row for row, doc_id in enumerate(self.ids)}

    def filter_rows(self, flt: Filter | None) -> np.ndarray | None:
        """The rows ``flt`` allows (None: every row): its ids through the ids held in memory, its fields
        through the document store."""
        if flt is None or flt.empty:
            return None
        allowed = None
        if flt.ids is not None:
            allowed = {row for doc_id in flt.ids if (row := self._rows_by_id.get(doc_id)) is not None}
        if flt.fields:
            if self.docstore is None:
                raise UserError(f"{self.source} has no document store: it can filter by ids only (rebuild it)")
            return self.docstore.rows(flt.fields, allowed)
        assert allowed is not None  # a filter that is not empty has ids or fields
        return np.array(sorted(allowed), dtype=np.int64)

    def query(self, vectors: np.ndarray, texts: Sequence[str], specs: Sequence[SearchSpec]) -> list[list[Hit]]:
        """The hits of each query (``vectors[i]``, ``texts[i]``) as ``specs[i]`` asks. The unfiltered dense
        sides share one FAISS search per candidate depth; filtered ones search alone, through their selector."""
        modes = [spec.mode or self.default_mode for spec in specs]
        for mode in modes:
            if mode not in self.modes:
                raise UserError(f"{self.source} holds no BM25 index: mode {mode!r} needs one (index build --bm25)")
        rows = [self.filter_rows(spec.filter) for spec in specs]
        depths = [max(s.k, HYBRID_DEPTH) if m == "hybrid" else s.k for s, m in zip(specs, modes, strict=True)]
        dense: list[fusion.Ranking] = [[] for _ in specs]
        shared: dict[int, list[int]] = {}
        for i, mode in enumerate(modes):
            if mode == "bm25":
                continue
            if rows[i] is None:
                shared.setdefault(depths[i], []).append(i)
            else:
                dense[i] = self._ranked(*self.search(vectors[i : i + 1], depths[i], rows[i]))[0]
        for depth, group in shared.items():
            for i, ranking in zip(group, self._ranked(*self.search(vectors[group], depth)), strict=True):
                dense[i] = ranking
        return [
            self._answer(spec, mode, dense[i], self._lexical(texts[i], depths[i], rows[i]) if mode != "dense" else [])
            for i, (spec, mode) in enumerate(zip(specs, modes, strict=True))
        ]

    @staticmethod
    def _ranked(scores: np.ndarray, found: np.ndarray) -> list[fusion.Ranking]:
        return [
            [(r, s) for r, s in zip(rrow, srow, strict=True) if r >= 0]
            for srow, rrow in zip(scores.tolist(), found.tolist(), strict=True)
        ]

    def _lexical(self, text: str, depth: int, rows: np.ndarray | None) -> fusion.Ranking:
        assert self.lexical is not None  # checked through self.modes
        return self.lexical.search([text], depth, rows)[0]

    def _answer(self, spec: SearchSpec, mode: Mode, dense: fusion.Ranking, lexical: fusion.Ranking) -> list[Hit]:
        if mode == "hybrid":
            ranked = fusion.rrf([dense, lexical]) if spec.weight is None else fusion.convex(dense, lexical, spec.weight)
        else:
            ranked = dense or lexical
        ranked = ranked[: spec.k]
        if spec.score_threshold is not None:
            ranked = [(r, s) for r, s in ranked if s >= spec.score_threshold]
        extra = self._fields([r for r, _ in ranked], spec.fields)
        return [
            Hit(id=self.ids[r], score=s, title=self.titles[r] or None, fields=extra.get(r) if spec.fields else None)
            for r, s in ranked
        ]

    def _fields(self, rows: list[int], names: tuple[str, ...]) -> dict[int, dict[str, Any]]:
        if not names or not rows:
            return {}
        if self.docstore is None:
            raise UserError(f"{self.source} has no document store: it cannot return fields (rebuild it)")
        return self.docstore.fields(rows, names)

    def vectors(self) -> np.ndarray:
        """Every document vector, in row order (indexes that store them: Flat, HNSW, IVF-Flat)."""
        return to_cpu(self.index).reconstruct_n(0, self.index.ntotal)
