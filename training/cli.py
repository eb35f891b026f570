"""Training-side commands: ``scalingnote export`` (and, with stage 1/2, ``train`` and ``pipeline``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export_command(
    model: Annotated[str, typer.Option(help="Student/tower/teacher directory or built-in whose query side to export.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to publish (replaced atomically if present).")],
    index: Annotated[
        Path | None, typer.Option(help="Index the bundle will query: checked for space match, used by the gates.")
    ] = None,
    queries: Annotated[
        Path | None, typer.Option(help="Held-out queries (queries.jsonl or qid<TAB>text) for the gates.")
    ] = None,
    int8: Annotated[bool, typer.Option(help="Try an int8 CPU variant (kept only if it passes the gate).")] = True,
    min_parity: Annotated[float, typer.Option(help="Min torch/ONNX cosine on every sampled query.")] = 0.9999,
    min_overlap: Annotated[float, typer.Option(help="Min top-10 overlap of a quantised variant with fp32.")] = 0.95,
) -> None:
    """Export a query encoder to an ONNX model bundle (bundle.json, model.onnx, tokenizer.json)."""
    from scalingnote.beir import load_queries
    from training.export import export_bundle

    texts = list(load_queries(queries).values()) if queries else []
    manifest = export_bundle(
        model,
        out,
        index_dir=index,
        queries=texts,
        int8=int8,
        min_parity=min_parity,
        min_overlap=min_overlap,
        log=typer.echo,
    )
    typer.echo(f"bundle {manifest.name} ({', '.join(manifest.variants)}) -> {out}")
