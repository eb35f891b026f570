"""FAISS index creation and GPU selection (faiss-gpu where a GPU is visible, else faiss-cpu)."""

from __future__ import annotations

import faiss
import numpy as np

from scalingnote.errors import UserError

TRAIN_SIZE = 200_000  # k-means and PQ training sample (FAISS itself samples 256 points per centroid)
ADD_CHUNK = 65_536


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _to_gpu(index: faiss.Index) -> faiss.Index:
    """Move an index to GPU 0 when faiss-gpu sees one and supports the type; else return it unchanged."""
    if gpu_count() == 0:
        return index
    try:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except (RuntimeError, AttributeError):  # e.g. HNSW has no GPU implementation
        return index


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex) else index


def set_blas_queries(queries: int, dim: int) -> None:
    """Search flat indexes through BLAS (one matrix product per block) from batches of ``queries`` queries of
    ``dim`` dimensions, vector by vector below. The switch is process-wide; FAISS's own default (128,000
    floats, 333 queries of 384-d) leaves every batch a server forms on the slower path."""
    faiss.cvar.distance_compute_blas_threshold = queries * dim


def sample_rows(n: int, size: int) -> np.ndarray | slice:
    """A seeded, sorted sample of ``size`` of ``n`` row numbers (every row when ``n <= size``)."""
    return np.sort(np.random.default_rng(0).choice(n, size, replace=False)) if n > size else slice(None)


def build(
    vectors: np.ndarray, factory: str = "Flat", train_size: int = TRAIN_SIZE, chunk: int = ADD_CHUNK
) -> faiss.Index:
    """An inner-product index made by ``faiss.index_factory(dim, factory)``: trained (IVF, PQ …) on a seeded
    sample of at most ``train_size`` vectors, then filled ``chunk`` rows at a time (``vectors`` may be a memmap)."""
    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise UserError(f"invalid FAISS index factory string {factory!r}: {str(exc).splitlines()[-1]}") from None
    index = _to_gpu(index)
    if not index.is_trained:
        index.train(np.ascontiguousarray(vectors[sample_rows(len(vectors), train_size)], dtype=np.float32))
    for start in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32))
    return to_cpu(index)


def prepare_for_search(index: faiss.Index) -> faiss.Index:
    """The index to search with: on the GPU when there is one."""
    return _to_gpu(index)
