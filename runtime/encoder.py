"""The one query-encoder interface: torch towers and ONNX bundles both satisfy it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class QueryEncoder(Protocol):
    """Texts in, float32 ``[N, dim]`` embeddings out (length-sorted batches inside)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def engine(self) -> str:
        """``torch-float32``, ``onnx-int8`` …: what computes the embeddings."""
        ...

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...
