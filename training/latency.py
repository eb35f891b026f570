"""Query latency of an encoder (torch tower or ONNX bundle variant), optionally plus the FAISS search.

Used by the pipeline report (one number per row) and by ``bench/query_latency.py`` (the full matrix).
Threads are pinned (torch, ONNX Runtime and FAISS) so that rows are comparable on a shared machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from scalingnote.modeling.loading import load_query_encoder, query_params
from scalingnote.runtime.encoder import QueryEncoder

Encode = Callable[[list[str]], np.ndarray]


@dataclass
class TimedEncoder:
    """A query encoder with what the latency tables print about it."""

    encoder: QueryEncoder
    params: int

    @property
    def engine(self) -> str:
        return self.encoder.engine

    def encode(self, texts: list[str]) -> np.ndarray:
        """One call for the whole batch."""
        return self.encoder.encode(texts, batch_size=len(texts))


def load_timed(spec: str, variant: str = "fp32", threads: int = 1) -> TimedEncoder:
    """The query side of ``spec`` with ``threads`` intra-op threads (ONNX ``variant`` for a bundle)."""
    encoder = load_query_encoder(spec, variant, threads=threads)
    return TimedEncoder(encoder, query_params(encoder))


def time_queries(
    encode: Encode,
    texts: Sequence[str],
    batch_size: int = 1,
    search: Callable[[np.ndarray], object] | None = None,
    warmup: int = 5,
    limit: int = 200,
) -> dict[str, float]:
    """Median, p99 and mean milliseconds per call of ``batch_size`` queries (encode + optional search)."""
    texts = list(texts)
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    batches = [b for b in batches if len(b) == batch_size][: max(limit // batch_size, 1)]
    for b in batches[:warmup]:
        vecs = encode(b)
        if search is not None:
            search(vecs)
    times = []
    for b in batches:
        t0 = time.perf_counter()
        vecs = encode(b)
        if search is not None:
            search(vecs)
        times.append((time.perf_counter() - t0) * 1000)
    ms = np.asarray(times)
    return {
        "p50_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "qps": float(batch_size * 1000 / ms.mean()),
        "calls": len(ms),
    }


def pin_faiss_threads(threads: int) -> None:
    import faiss

    faiss.omp_set_num_threads(threads)
