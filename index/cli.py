"""``scalingnote index …``: build a FAISS index from a BEIR corpus with a doc tower, and manage index roots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from scalingnote.choices import Dtype, Runtime

if TYPE_CHECKING:
    from scalingnote.artifacts import IndexManifest
    from scalingnote.index.ray_build import RayOptions

app = typer.Typer(no_args_is_help=True, help="Build and manage FAISS indexes of doc-tower embeddings.")

Dataset = Annotated[Path, typer.Option(help="BEIR dataset directory (its corpus.jsonl is indexed).")]
DocEncoder = Annotated[str, typer.Option(help="Built-in name, model/tower directory or teacher directory.")]
Factory = Annotated[
    str, typer.Option("--index-factory", help="FAISS index_factory string: Flat, HNSW32, IVF256,PQ32 …")
]
BatchSize = Annotated[int, typer.Option(min=1)]
ShardSize = Annotated[int, typer.Option(min=1, help="Docs per resumable embedding shard.")]
DtypeOpt = Annotated[Dtype, typer.Option(help="auto: bf16 for LLMs on a GPU, else fp32.")]
MaxLength = Annotated[int | None, typer.Option(min=8, help="Doc token budget (default: the tower's).")]
Keep = Annotated[
    int, typer.Option(min=1, envvar="SCALINGNOTE_KEEP_VERSIONS", help="Versions to keep (current never goes).")
]
RuntimeOpt = Annotated[
    Runtime,
    typer.Option(help="What runs the doc tower: torch, or ONNX Runtime (fp32, checked against torch; often faster)."),
]
Engine = Annotated[
    Literal["local", "ray"],
    typer.Option(help="Where to embed: this process, or Ray Data actors (the `scale` extra)."),
]
RayAddress = Annotated[
    str | None, typer.Option(envvar="RAY_ADDRESS", help="--engine ray: the cluster (default: a local Ray).")
]
RayActors = Annotated[
    int | None, typer.Option(min=1, help="--engine ray: doc-tower actors (default: one per GPU, else per CPU).")
]
RayActorCpus = Annotated[int, typer.Option(min=1, help="--engine ray: CPUs (torch threads) per actor.")]
RecallTarget = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="ANN indexes (HNSW, IVF): record the smallest efSearch/nprobe whose recall@10 against exact search "
        "reaches this on held-out queries; the service applies it.",
    ),
]
ServedBundle = Annotated[
    Path | None,
    typer.Option(
        envvar="SCALINGNOTE_BUNDLE",
        help="The served bundle: refuse a doc tower of another space (default: the current version's).",
    ),
]
EmbedCache = Annotated[
    bool, typer.Option(help="Embed only new or changed documents; reuse the rest from ROOT/.embeddings.")
]
Bm25 = Annotated[
    bool, typer.Option("--bm25/--no-bm25", help="Also write a BM25 index: /search gets the bm25 and hybrid modes.")
]
RebuildBm25 = Annotated[
    bool | None,
    typer.Option(
        "--bm25/--no-bm25",
        help="Also write a BM25 index (bm25 and hybrid modes). Default: as the current version has one or not.",
        show_default=False,
    ),
]
TuneQueries = Annotated[
    Path | None,
    typer.Option(help="--recall-target: queries (jsonl or qid<TAB>text) to tune on (default: the dataset's)."),
]


def _ray(engine: str, address: str | None, actors: int | None, cpus: int) -> RayOptions | None:
    """The build's ``ray`` argument: None for the in-process engine."""
    from scalingnote.index.ray_build import RayOptions

    return RayOptions(address, actors, cpus) if engine == "ray" else None


Backend = Annotated[
    Literal["faiss", "milvus"],
    typer.Option(envvar="SCALINGNOTE_BACKEND", help="milvus: also serve each version as a Milvus collection (alias)."),
]
MilvusUri = Annotated[
    str | None, typer.Option(envvar="SCALINGNOTE_MILVUS_URI", help="Milvus: a Lite .db file or http://host:port.")
]
MilvusAlias = Annotated[
    str, typer.Option(envvar="SCALINGNOTE_MILVUS_ALIAS", help="Milvus alias moved with ROOT/current.")
]


@app.command("build")
def build_command(
    dataset: Dataset,
    doc_encoder: DocEncoder,
    out: Annotated[Path, typer.Option(help="Index directory to publish (replaced atomically if present).")],
    index_factory: Factory = "Flat",
    batch_size: BatchSize = 64,
    shard_size: ShardSize = 1024,
    dtype: DtypeOpt = "auto",
    max_length: MaxLength = None,
    runtime: RuntimeOpt = "torch",
    engine: Engine = "local",
    ray_address: RayAddress = None,
    ray_actors: RayActors = None,
    ray_actor_cpus: RayActorCpus = 1,
    recall_target: RecallTarget = None,
    tune_queries: TuneQueries = None,
    bm25: Bm25 = False,
) -> None:
    """Embed a corpus with the doc tower and publish index.faiss, docs.json, docs.sqlite (+ bm25/), manifest.json."""
    from scalingnote.index.build import build_index

    ray = _ray(engine, ray_address, ray_actors, ray_actor_cpus)
    manifest = build_index(
        dataset,
        doc_encoder,
        out,
        index_factory,
        batch_size,
        shard_size,
        dtype,
        max_length=max_length,
        ray=ray,
        runtime=runtime,
        recall_target=recall_target,
        tune_queries=tune_queries,
        bm25=bm25,
    )
    shape = f"dim {manifest.space.dim}, {manifest.factory}{', + BM25' if bm25 else ''}"
    typer.echo(f"indexed {manifest.count} docs ({shape}) -> {out}{_tuned(manifest)}")


def _tuned(manifest: IndexManifest) -> str:
    """The recorded search parameters, for the CLI's last line."""
    search = manifest.search
    if search is None:
        return ""
    params = ", ".join(f"{k}={v}" for k, v in search.params.items()) or "exact search"
    return f" [{params}: recall@{search.k} {search.recall:.3f} on {search.queries} queries]"


@app.command("rebuild")
def rebuild_command(
    dataset: Dataset,
    doc_encoder: DocEncoder,
    root: Annotated[Path, typer.Option(help="Index root: builds ROOT/versions/<id>, then repoints ROOT/current.")],
    keep: Keep = 3,
    index_factory: Factory = "Flat",
    batch_size: BatchSize = 64,
    shard_size: ShardSize = 1024,
    dtype: DtypeOpt = "auto",
    max_length: MaxLength = None,
    runtime: RuntimeOpt = "torch",
    bundle: ServedBundle = None,
    force: Annotated[bool, typer.Option(help="Make the new version current even if its space differs.")] = False,
    embed_cache: EmbedCache = True,
    backend: Backend = "faiss",
    milvus_uri: MilvusUri = None,
    milvus_alias: MilvusAlias = "scalingnote",
    engine: Engine = "local",
    ray_address: RayAddress = None,
    ray_actors: RayActors = None,
    ray_actor_cpus: RayActorCpus = 1,
    recall_target: RecallTarget = None,
    tune_queries: TuneQueries = None,
    bm25: RebuildBm25 = None,
) -> None:
    """Batch rebuild job: a new index version, published by an atomic swap of ROOT/current (resumable)."""
    from scalingnote.index.milvus_backend import store_for
    from scalingnote.index.versions import rebuild

    milvus = store_for(backend, milvus_uri, milvus_alias)
    manifest = rebuild(
        root,
        dataset,
        doc_encoder,
        keep,
        bundle,
        force,
        factory=index_factory,
        batch_size=batch_size,
        shard_size=shard_size,
        embed_cache=embed_cache,
        before_adopt=milvus.write if milvus else None,
        dtype=dtype,
        max_length=max_length,
        runtime=runtime,
        ray=_ray(engine, ray_address, ray_actors, ray_actor_cpus),
        recall_target=recall_target,
        tune_queries=tune_queries,
        bm25=bm25,
    )
    if milvus:
        typer.echo(f"alias {milvus.alias} -> {milvus.sync(root)}")
    counts = manifest.vectors
    reuse = f" ({counts.embedded} embedded, {counts.reused} reused, {counts.dropped} dropped)" if counts else ""
    typer.echo(f"version {manifest.version}: {manifest.count} docs{reuse} -> {root}/current{_tuned(manifest)}")


@app.command("publish")
def publish_command(
    index: Annotated[Path, typer.Option(help="A built index directory (scalingnote index build --out).")],
    root: Annotated[Path, typer.Option(help="Index root to adopt it into as a new version (made current).")],
    keep: Keep = 3,
    backend: Backend = "faiss",
    milvus_uri: MilvusUri = None,
    milvus_alias: MilvusAlias = "scalingnote",
) -> None:
    """Adopt an already-built index directory as the current version of an index root."""
    from scalingnote.index.milvus_backend import store_for
    from scalingnote.index.versions import publish_version

    milvus = store_for(backend, milvus_uri, milvus_alias)
    manifest = publish_version(index, root, keep)
    if milvus:
        typer.echo(f"alias {milvus.alias} -> {milvus.sync(root)}")
    typer.echo(f"version {manifest.version}: {manifest.count} docs -> {root}/current")


@app.command("rollback")
def rollback_command(
    root: Annotated[Path, typer.Option(help="Index root whose ROOT/current is repointed.")],
    version: Annotated[str | None, typer.Option(help="Version id to make current (default: the previous one).")] = None,
    backend: Backend = "faiss",
    milvus_uri: MilvusUri = None,
    milvus_alias: MilvusAlias = "scalingnote",
) -> None:
    """Repoint ROOT/current (and the Milvus alias) at the previous version (or --version); services follow."""
    from scalingnote.index.milvus_backend import store_for
    from scalingnote.index.versions import rollback

    milvus = store_for(backend, milvus_uri, milvus_alias)
    typer.echo(f"current -> {rollback(root, version)} ({root})")
    if milvus:
        typer.echo(f"alias {milvus.alias} -> {milvus.sync(root)}")
