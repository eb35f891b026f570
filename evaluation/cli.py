"""``scalingnote eval``: dense or BM25 retrieval quality on a BEIR split (table + JSON)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from scalingnote.choices import Mode, VariantChoice
from scalingnote.errors import UserError


def eval_command(
    dataset: Annotated[Path, typer.Option(help="BEIR dataset directory (corpus.jsonl, queries.jsonl, qrels/).")],
    split: Annotated[str, typer.Option(help="qrels split to score.")] = "test",
    index: Annotated[Path | None, typer.Option(help="Index directory built by `scalingnote index build`.")] = None,
    query_encoder: Annotated[
        str | None, typer.Option(help="Built-in name, model/tower/teacher directory or ONNX bundle.")
    ] = None,
    bm25: Annotated[bool, typer.Option("--bm25", help="Score the BM25 baseline instead of a dense index.")] = False,
    mode: Annotated[
        Mode, typer.Option(help="With --index: dense, bm25 (the index's, else one over the corpus) or hybrid (RRF).")
    ] = "dense",
    variant: Annotated[VariantChoice, typer.Option(help="Bundle variant (auto: int8 on CPU, fp16 on GPU).")] = "auto",
    k: Annotated[int, typer.Option(min=1, help="Results retrieved per query.")] = 100,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics and run info to this file.")] = None,
) -> None:
    """Score retrieval on a BEIR split: nDCG@10, Recall@100, MRR@10 (ir-measures)."""
    from scalingnote.beir import load_dataset
    from scalingnote.evaluation.metrics import evaluate

    if bm25 == (index is not None):
        raise UserError("give exactly one of --bm25 or --index (with --query-encoder)")
    if index is not None and query_encoder is None:
        raise UserError("--index needs --query-encoder")
    ds = load_dataset(dataset, (split,))
    queries = ds.split_queries(split)
    t0 = time.perf_counter()
    if bm25:
        from scalingnote.evaluation.bm25 import bm25_run

        run, timing, system = bm25_run(ds.corpus, queries, k), {}, "bm25"
    else:
        from scalingnote.evaluation.dense import dense_run

        run, timing = dense_run(index, query_encoder, queries, k, variant, mode, ds.corpus)
        system = f"{query_encoder} -> {index}" + ("" if mode == "dense" else f" ({mode})")
    metrics = evaluate(ds.qrels[split], run)
    result = {
        "system": system,
        "dataset": ds.name,
        "split": split,
        **metrics,
        "queries": len(queries),
        "seconds": round(time.perf_counter() - t0, 3),
        **{k_: round(v, 4) for k_, v in timing.items()},
    }
    table = Table(title=f"{ds.name} / {split} ({len(queries)} queries)")
    for col in ("system", *metrics):
        table.add_column(col)
    table.add_row(system, *(f"{v:.4f}" for v in metrics.values()))
    Console().print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
