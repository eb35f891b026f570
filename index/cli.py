"""``scalingnote index …``: build a FAISS index from a BEIR corpus with a doc tower."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Build and manage FAISS indexes of doc-tower embeddings.")


@app.command("build")
def build_command(
    dataset: Annotated[Path, typer.Option(help="BEIR dataset directory (its corpus.jsonl is indexed).")],
    doc_encoder: Annotated[str, typer.Option(help="Built-in name, model/tower directory or teacher directory.")],
    out: Annotated[Path, typer.Option(help="Index directory to publish (replaced atomically if present).")],
    index_factory: Annotated[
        str, typer.Option(help="FAISS index_factory string: Flat, HNSW32, IVF256,PQ32 …")
    ] = "Flat",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    shard_size: Annotated[int, typer.Option(min=1, help="Docs per resumable embedding shard.")] = 1024,
    dtype: Annotated[str, typer.Option(help="auto (bf16 for LLMs on GPU, else fp32), fp32, bf16.")] = "auto",
    max_length: Annotated[int | None, typer.Option(min=8, help="Doc token budget (default: the tower's).")] = None,
) -> None:
    """Embed a corpus with the doc tower and publish index.faiss + docs.json + manifest.json."""
    from index.build import build_index
    from scalingnote.errors import UserError

    if dtype not in ("auto", "fp32", "bf16"):
        raise UserError(f"--dtype must be auto, fp32 or bf16, not {dtype!r}")
    manifest = build_index(
        dataset, doc_encoder, out, index_factory, batch_size, shard_size, dtype, max_length=max_length
    )  # type: ignore[arg-type]
    typer.echo(f"indexed {manifest.count} docs (dim {manifest.doc_tower.dim}, {manifest.factory}) -> {out}")


@app.command("rebuild")
def rebuild_command(
    dataset: Annotated[Path, typer.Option(help="BEIR dataset directory (its corpus.jsonl is indexed).")],
    doc_encoder: Annotated[str, typer.Option(help="Built-in name, model/tower directory or teacher directory.")],
    root: Annotated[Path, typer.Option(help="Index root: builds ROOT/versions/<id>, then repoints ROOT/current.")],
    keep: Annotated[
        int, typer.Option(min=1, envvar="SCALINGNOTE_KEEP_VERSIONS", help="Versions to keep (current never goes).")
    ] = 3,
    index_factory: Annotated[str, typer.Option(help="FAISS index_factory string.")] = "Flat",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    shard_size: Annotated[int, typer.Option(min=1, help="Docs per resumable embedding shard.")] = 1024,
    dtype: Annotated[str, typer.Option(help="auto (bf16 for LLMs on GPU, else fp32), fp32, bf16.")] = "auto",
    max_length: Annotated[int | None, typer.Option(min=8, help="Doc token budget (default: the tower's).")] = None,
) -> None:
    """Batch rebuild job: a new index version, published by an atomic swap of ROOT/current (resumable)."""
    from index.versions import rebuild
    from scalingnote.errors import UserError

    if dtype not in ("auto", "fp32", "bf16"):
        raise UserError(f"--dtype must be auto, fp32 or bf16, not {dtype!r}")
    manifest = rebuild(
        root,
        dataset,
        doc_encoder,
        keep,
        factory=index_factory,
        batch_size=batch_size,
        shard_size=shard_size,
        dtype=dtype,
        max_length=max_length,
    )
    typer.echo(f"version {manifest.version}: {manifest.count} docs -> {root}/current")


@app.command("publish")
def publish_command(
    index: Annotated[Path, typer.Option(help="A built index directory (scalingnote index build --out).")],
    root: Annotated[Path, typer.Option(help="Index root to adopt it into as a new version (made current).")],
    keep: Annotated[
        int, typer.Option(min=1, envvar="SCALINGNOTE_KEEP_VERSIONS", help="Versions to keep (current never goes).")
    ] = 3,
) -> None:
    """Adopt an already-built index directory as the current version of an index root."""
    from index.versions import publish

    manifest = publish(index, root, keep)
    typer.echo(f"version {manifest.version}: {manifest.count} docs -> {root}/current")
