"""Dense, BM25 and hybrid retrieval for eval: encode queries (torch tower or ONNX bundle), search an index."""

from __future__ import annotations

import time
from pathlib import Path

from scalingnote.artifacts import check_space, read_index_manifest
from scalingnote.beir import Document
from scalingnote.errors import UserError
from scalingnote.evaluation.metrics import Run
from scalingnote.index.lexical import Lexical
from scalingnote.index.query import Mode, SearchSpec
from scalingnote.index.store import LoadedIndex
from scalingnote.modeling.loading import load_query_encoder
from scalingnote.specs import query_space, resolve


def dense_run(
    index_dir: Path,
    encoder_spec: str,
    queries: dict[str, str],
    k: int = 100,
    variant: str = "auto",
    mode: Mode = "dense",
    corpus: dict[str, Document] | None = None,
) -> tuple[Run, dict[str, float]]:
    """Rank the index for each query as ``mode`` says (as ``/search`` would); returns the run and timing
    figures. An index built without BM25 gets one over ``corpus`` for the bm25 and hybrid modes."""
    manifest = read_index_manifest(index_dir)
    ref = resolve(encoder_spec)
    check_space(query_space(ref), manifest.space)  # refuse before loading any weights
    index = LoadedIndex.load(index_dir)
    if mode != "dense" and index.lexical is None:
        if corpus is None:
            raise UserError(f"{index_dir} holds no BM25 index: mode {mode} needs one (index build --bm25)")
        index.lexical = Lexical.build([corpus[doc_id].full_text for doc_id in index.ids])
    encoder = load_query_encoder(ref, variant)
    qids = list(queries)
    t0 = time.perf_counter()
    vectors = encoder.encode([queries[q] for q in qids])
    t1 = time.perf_counter()
    if mode == "dense":
        hits = index.hits(vectors, k)
    else:
        hits = index.query(vectors, [queries[q] for q in qids], [SearchSpec(k, mode)] * len(qids))
    t2 = time.perf_counter()
    run = {qid: {h.id: h.score for h in row} for qid, row in zip(qids, hits, strict=True)}
    return run, {"encode_s": t1 - t0, "search_s": t2 - t1, "queries": len(qids)}
