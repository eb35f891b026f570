"""Query latency of an encoder (torch tower or ONNX bundle variant), optionally plus the FAISS search.

Used by the pipeline report (one number per row) and by ``bench/query_latency.py`` (the full matrix).
Threads are pinned (torch, ONNX Runtime and FAISS) so that rows are comparable on a shared machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalingnote.encoders import resolve

Encode = Callable[[list[str]], np.ndarray]


@dataclass
class LoadedEncoder:
    name: str
    engine: str
    params: int
    encode: Encode


def onnx_params(model: Path) -> int:
    """Number of weights in an ONNX graph: elements of its float and int8 initializers (not shape constants)."""
    import onnx

    kinds = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    graph = onnx.load(str(model), load_external_data=False).graph
    return int(sum(np.prod(t.dims) for t in graph.initializer if t.data_type in kinds and len(t.dims) >= 1))


def load_encoder(spec: str, variant: str = "fp32", threads: int = 1) -> LoadedEncoder:
    """The query side of ``spec``: a bundle's ONNX ``variant``, else the torch query tower."""
    ref = resolve(spec)
    if ref.kind == "bundle":
        from scalingnote.bundle import BundleEncoder

        enc = BundleEncoder(ref.path, variant=variant, threads=threads)
        params = onnx_params(ref.path / enc.manifest.variants[enc.variant])
        return LoadedEncoder(ref.id, f"onnx-{enc.variant}", params, lambda t: enc.encode_with_flags(t)[0])
    import torch

    from modeling.tower import Tower

    torch.set_num_threads(threads)
    tower = Tower.from_pretrained(ref.tower_path("query"), ident=ref.id).eval()
    params = sum(p.numel() for n, p in tower.named_parameters() if ".pooler." not in n)  # BERT's pooler is unused
    engine = f"torch-{str(tower.resolve_dtype('auto')).removeprefix('torch.')}"
    return LoadedEncoder(ref.id, engine, params, lambda t: tower.encode(t, batch_size=len(t), progress=False))


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
