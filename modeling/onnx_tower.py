"""A torch tower's encode-only passes on ONNX Runtime: index builds and teacher labels (``runtime = "onnx"``).

The tower is traced once to a temporary fp32 graph (the bundle's graph: pooling, projection and norm inside),
checked against torch on probe texts, then encodes with the tower's own tokenizer in length-sorted batches.
Training never goes through it: gradients stay in torch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from scalingnote.choices import Dtype, Runtime
from scalingnote.errors import UserError
from scalingnote.modeling.onnx_graph import export_onnx
from scalingnote.modeling.tower import Tower
from scalingnote.runtime.bundle import OUTPUT_NAME, make_session
from scalingnote.runtime.tokenization import length_sorted_batches, pad_encodings

PROBES = (
    "a short query",
    "Which genes regulate the growth of plant roots under drought?",
    "A somewhat longer passage, of the kind a corpus holds, with numbers (12.5 %) and a parenthesis, to probe "
    "position embeddings past the first few tokens of the sequence.",
)
MIN_PARITY = 0.9999  # least cosine between ONNX Runtime's and torch's fp32 vectors of a probe


class OnnxTower:
    """``tower``'s :meth:`Tower.encode` on ONNX Runtime (fp32, ``threads``: torch's thread count by default).

    The graph is traced and checked on first use, so a build whose vectors all come from a cache pays nothing."""

    def __init__(self, tower: Tower, threads: int | None = None):
        self.tower = tower.eval()
        self.threads = threads or torch.get_num_threads()

    @cached_property
    def session(self):
        """The checked ONNX Runtime session of the traced tower."""
        with tempfile.TemporaryDirectory(prefix="scalingnote-onnx-") as tmp:
            path = Path(tmp) / "tower.onnx"
            export_onnx(self.tower, path)
            session = make_session(path, self.threads)
        cos = (self._run(session, PROBES, len(PROBES)) * self.tower.encode(PROBES, dtype="fp32")).sum(1)
        if cos.min() < MIN_PARITY:
            raise UserError(f"ONNX Runtime differs from torch on {self.meta.id} (cosine {cos.min():.6f}): use torch")
        return session

    @property
    def meta(self):
        return self.tower.meta

    @property
    def dim(self) -> int:
        return self.tower.dim

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        dtype: Dtype = "auto",
        progress: bool = False,
        desc: str = "encode",
    ) -> np.ndarray:
        """Like :meth:`Tower.encode`, always in fp32 (``dtype`` bf16 is refused)."""
        if self.tower.resolve_dtype(dtype) != torch.float32:
            raise UserError("the onnx runtime encodes in fp32 only: use dtype fp32 or auto, or the torch runtime")
        return self._run(self.session, texts, batch_size, progress, desc)

    def _run(
        self, session, texts: Sequence[str], batch_size: int, progress: bool = False, desc: str = ""
    ) -> np.ndarray:
        encodings = self.tower.tokenize(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, leave=False) as bar:
            for idx in length_sorted_batches(encodings, batch_size):
                ids, mask = pad_encodings([encodings[i] for i in idx], self.tower.pad_id)
                out[idx] = session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})[0]
                bar.update(len(idx))
        return out


def encoder_for(tower: Tower, runtime: Runtime) -> Tower | OnnxTower:
    """What runs a tower's encode-only passes: the tower itself (``torch``) or :class:`OnnxTower` (``onnx``)."""
    return OnnxTower(tower) if runtime == "onnx" else tower
