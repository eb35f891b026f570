"""The ONNX query encoder of a model bundle: tokenizers + ONNX Runtime, no torch.

Graph contract (written by ``scalingnote export``): inputs ``input_ids`` and ``attention_mask``
(int64, [batch, seq]); output ``sentence_embedding`` (float32, [batch, dim]) with pooling,
projection and L2 normalisation inside the graph.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding

from scalingnote.artifacts import BundleManifest, read_bundle_manifest
from scalingnote.errors import ArtifactError, UserError
from scalingnote.runtime.device import cuda_available
from scalingnote.runtime.tokenization import length_groups, length_sorted_batches, load_tokenizer, pad_encodings

INPUT_NAMES = ("input_ids", "attention_mask")
CALL_COST_TOKENS = 8  # an ONNX Runtime call's fixed cost on a CPU, in tokens of a transformer's work
OUTPUT_NAME = "sentence_embedding"


def pick_variant(manifest: BundleManifest, variant: str) -> str:
    """``auto`` picks fp16 on a GPU and int8 on a CPU when the bundle has them, else fp32."""
    if variant != "auto":
        if variant not in manifest.variants:
            have = ", ".join(manifest.variants)
            raise UserError(f"bundle {manifest.name!r} has no {variant!r} variant (has: {have})")
        return variant
    preferred = "fp16" if cuda_available() else "int8"
    return preferred if preferred in manifest.variants else "fp32"


def make_session(model: Path, threads: int | None = None, spin: bool = True):
    """An ONNX Runtime session on CUDA when a GPU is there, else CPU with ``threads`` intra-op threads.

    ``spin=False`` stops idle intra-op threads from busy-waiting for work, which leaves the CPU to the
    other threads of a process (a server's event loop) at the cost of a slower wake-up.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda_available() else ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(os.fspath(model), sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for corrupt graphs
        raise ArtifactError(f"{model}: ONNX Runtime cannot load the graph ({str(exc).splitlines()[0]})") from None


@dataclass(frozen=True)
class Encoded:
    """One ONNX call: the vectors [N, dim]; per text, whether it was cut to ``max_length`` and the tokens it
    kept (prefix and special tokens included); the seconds spent tokenizing (``tokenize``) and in ONNX
    (``encode``)."""

    vectors: np.ndarray
    truncated: list[bool]
    tokens: list[int]
    seconds: dict[str, float]


class BundleEncoder:
    """Encode queries with a bundle's ONNX graph; reports which inputs were truncated."""

    def __init__(
        self,
        path: Path | str,
        variant: str = "auto",
        threads: int | None = None,
        verify: bool = True,
        spin: bool = True,
        length_groups: bool = True,
    ):
        self.path = Path(path)
        self.manifest = read_bundle_manifest(self.path, verify=verify)
        self.variant = pick_variant(self.manifest, variant)
        enc = self.manifest.encoder
        self.tokenizer, self.pad_id = load_tokenizer(self.path, enc.max_length, append_eos=False)
        self.session = make_session(self.path / self.manifest.variants[self.variant], threads, spin)
        self.provider = self.session.get_providers()[0]
        # where padding costs compute: a transformer on the CPU (a GPU pays more per call than per padded token)
        self.length_groups = (
            length_groups and self.manifest.architecture == "transformer" and self.provider == "CPUExecutionProvider"
        )

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def engine(self) -> str:
        return f"onnx-{self.variant}"

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        prefix = self.manifest.encoder.prefix
        return self.tokenizer.encode_batch([prefix + t for t in texts])

    def run(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Embed ``encodings``: float32 [N, dim]. With ``length_groups``, one ONNX call per group of similar
        token length (:func:`length_groups`: a batch padded to its longest query costs that length per row),
        else one call padded to the longest."""
        if not self.length_groups or len(encodings) < 2:
            return self._call(encodings)
        out = np.empty((len(encodings), self.dim), dtype=np.float32)
        for rows in length_groups([len(e.ids) for e in encodings], CALL_COST_TOKENS):
            out[rows] = self._call([encodings[i] for i in rows])
        return out

    def _call(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """One ONNX call over ``encodings``, padded to the longest."""
        ids, mask = pad_encodings(encodings, self.pad_id)
        (vectors,) = self.session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})
        return np.asarray(vectors, dtype=np.float32)

    def encode_with_flags(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Embeddings [N, dim] in one call and, per text, whether it was cut to ``max_length`` tokens."""
        out = self.encode_timed(texts)
        return out.vectors, out.truncated

    def encode_timed(self, texts: Sequence[str]) -> Encoded:
        """:meth:`encode_with_flags` plus each text's token count and the time of each step."""
        started = time.perf_counter()
        encodings = self.tokenize(texts)
        tokenized = time.perf_counter()
        vectors = self.run(encodings)
        seconds = {"tokenize": tokenized - started, "encode": time.perf_counter() - tokenized}
        return Encoded(vectors, [bool(e.overflowing) for e in encodings], [len(e.ids) for e in encodings], seconds)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed any number of texts in batches of similar token length."""
        encodings = self.tokenize(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for idx in length_sorted_batches(encodings, batch_size):
            out[idx] = self.run([encodings[i] for i in idx])
        return out
