"""The search-backend seam: what serving needs of an index; FAISS ``LoadedIndex`` and ``MilvusIndex`` both fit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from scalingnote.artifacts import IndexManifest
from scalingnote.index.query import Mode, SearchSpec
from scalingnote.index.store import Hit


class SearchIndex(Protocol):
    """One loaded index version: its manifest, dimension, where it lives, the retrieval modes it holds, batched
    dense top-k search, and one query as a :class:`SearchSpec` asks (mode, filter, fields, score floor)."""

    manifest: IndexManifest

    @property
    def dim(self) -> int: ...

    @property
    def source(self) -> str:
        """Where the index lives, for messages (a directory, a Milvus collection)."""
        ...

    def hits(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` documents of each query vector, best first."""
        ...

    @property
    def modes(self) -> tuple[Mode, ...]: ...

    @property
    def default_mode(self) -> Mode: ...

    def query(self, vectors: np.ndarray, texts: Sequence[str], specs: Sequence[SearchSpec]) -> list[list[Hit]]:
        """The hits of each query (``vectors[i]``, ``texts[i]``) as ``specs[i]`` asks."""
        ...
