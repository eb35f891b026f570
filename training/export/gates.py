"""The checks an exported variant must pass to be kept: torch parity, top-10 overlap with fp32, speed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scalingnote.errors import UserError
from scalingnote.evaluation.metrics import overlap_at_k
from scalingnote.index.store import LoadedIndex
from scalingnote.modeling.tower import Tower
from scalingnote.runtime.bundle import BundleEncoder


class ExportError(UserError):
    """The exported graph failed a gate."""


def parity(tower: Tower, bundle_dir: Path, texts: Sequence[str]) -> float:
    """Smallest cosine between torch and ONNX Runtime embeddings over ``texts``."""
    ref = tower.encode(list(texts), batch_size=16, dtype="fp32")
    got = BundleEncoder(bundle_dir, variant="fp32", verify=False).encode(list(texts), batch_size=16)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    return float(cos.min())


def latency_ratio(bundle_dir: Path, variant: str, texts: Sequence[str], rounds: int = 3) -> float:
    """Median batch-1 latency of ``variant`` over fp32's, one thread each, runs interleaved (fair under load)."""
    encoders = [BundleEncoder(bundle_dir, variant=v, threads=1, verify=False) for v in ("fp32", variant)]
    times: list[list[float]] = [[], []]
    sample = list(texts)[:64]
    for _ in range(rounds):
        for text in sample:
            for i, enc in enumerate(encoders):
                t0 = time.perf_counter()
                enc.encode_with_flags([text])
                times[i].append(time.perf_counter() - t0)
    return float(np.median(times[1]) / np.median(times[0]))


def top10_overlap(bundle_dir: Path, variant: str, index: LoadedIndex, texts: Sequence[str]) -> float:
    """Mean |top10(variant) ∩ top10(fp32)| / 10 over ``texts``."""
    base = BundleEncoder(bundle_dir, variant="fp32", verify=False).encode(list(texts))
    other = BundleEncoder(bundle_dir, variant=variant, verify=False).encode(list(texts))
    return overlap_at_k(index.search(base, 10)[1], index.search(other, 10)[1])
