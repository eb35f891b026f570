"""Dense retrieval for eval: encode queries (torch tower or ONNX bundle), search a FAISS index."""

from __future__ import annotations

import time
from pathlib import Path

from scalingnote.artifacts import check_space, read_index_manifest
from scalingnote.evaluation.metrics import Run
from scalingnote.index.store import LoadedIndex
from scalingnote.modeling.loading import load_query_encoder
from scalingnote.specs import query_space, resolve


def dense_run(
    index_dir: Path, encoder_spec: str, queries: dict[str, str], k: int = 100, variant: str = "auto"
) -> tuple[Run, dict[str, float]]:
    """Rank the index for each query; returns the run and timing figures."""
    manifest = read_index_manifest(index_dir)
    ref = resolve(encoder_spec)
    check_space(query_space(ref), manifest.space)  # refuse before loading any weights
    index = LoadedIndex.load(index_dir)
    encoder = load_query_encoder(ref, variant)
    qids = list(queries)
    t0 = time.perf_counter()
    vectors = encoder.encode([queries[q] for q in qids])
    t1 = time.perf_counter()
    hits = index.hits(vectors, k)
    t2 = time.perf_counter()
    run = {qid: {h.id: h.score for h in row} for qid, row in zip(qids, hits, strict=True)}
    return run, {"encode_s": t1 - t0, "search_s": t2 - t1, "queries": len(qids)}
