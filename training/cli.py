"""Training-side commands: ``scalingnote train …``, ``scalingnote pipeline`` and ``scalingnote export``.

Heavy imports (torch, transformers) happen inside the commands: the CLI module itself stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Train teachers (stage 1), distil students (stage 2), baselines.")

ProfileOpt = Annotated[str, typer.Option(help="Profile whose settings are the defaults: demo, cpu, cpu-llm, gpu.")]
DatasetOpt = Annotated[Path | None, typer.Option(help="BEIR dataset directory (default: the profile's dataset).")]
MaxSteps = Annotated[int | None, typer.Option(min=1, help="Cap every training stage at this many steps (smoke).")]


def _work(out: Path, work: Path | None) -> Path:
    return work or out.parent / f".{out.name}.work"


def _updated(model, **overrides):
    """``model`` with the non-None ``overrides`` applied (validated: a bad value is a one-line user error)."""
    from pydantic import ValidationError

    from scalingnote.errors import UserError

    data = model.model_dump() | {k: v for k, v in overrides.items() if v is not None}
    try:
        return type(model).model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}") from None


@app.command("towers")
def towers_command(
    out: Annotated[Path, typer.Option(help="Teacher (dual tower) directory to publish.")],
    profile: ProfileOpt = "cpu",
    dataset: DatasetOpt = None,
    work: Annotated[Path | None, typer.Option(help="Checkpoints and curves (default: .<out>.work).")] = None,
    backbone: Annotated[str | None, typer.Option(help="Built-in name or HF directory to start from.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimisation steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=2, help="Global batch (queries per step).")] = None,
    negatives: Annotated[int | None, typer.Option(min=0, help="BM25 hard negatives per query.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    shared: Annotated[bool | None, typer.Option("--shared/--separate", help="One shared tower or two.")] = None,
    layers: Annotated[int | None, typer.Option(min=1, help="Keep only the backbone's first N layers.")] = None,
    pooling: Annotated[str | None, typer.Option(help="mean, cls or last-token (default: the backbone's).")] = None,
    temperature: Annotated[float | None, typer.Option(min=1e-4, help="InfoNCE temperature.")] = None,
    query_max_length: Annotated[int | None, typer.Option(min=4, help="Query token budget.")] = None,
    doc_max_length: Annotated[int | None, typer.Option(min=4, help="Document token budget.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto (bf16 for LLMs on GPU, else fp32), fp32, bf16.")] = None,
    lora_rank: Annotated[int | None, typer.Option(min=0, help="LoRA rank on all linear layers (0 = full).")] = None,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute acts.")
    ] = None,
    accumulation: Annotated[int | None, typer.Option(min=1, help="Micro-batches per optimiser step.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(min=1, help="Save a checkpoint every N steps.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--restart", help="Continue from the last checkpoint, or discard it.")
    ] = True,
    pseudo_queries: Annotated[
        Path | None, typer.Option(help="doc2query JSONL cache whose queries become extra training pairs.")
    ] = None,
    max_steps: MaxSteps = None,
) -> None:
    """Stage 1: train query and doc towers (run under torchrun for cross-rank negatives)."""
    from training.doc2query import read_cache
    from training.pipeline import resolve_dataset
    from training.profiles import get_profile
    from training.towers import train_towers

    prof = get_profile(profile).capped(max_steps)
    cfg = _updated(
        prof.towers,
        backbone=backbone,
        steps=steps,
        batch_size=batch_size,
        negatives=negatives,
        lr=lr,
        shared=shared,
        layers=layers,
        pooling=pooling,
        temperature=temperature,
        query_max_length=query_max_length,
        doc_max_length=doc_max_length,
        dtype=dtype,
        lora_rank=lora_rank,
        gradient_checkpointing=gradient_checkpointing,
        accumulation=accumulation,
        checkpoint_every=checkpoint_every,
    )
    pseudo = read_cache(pseudo_queries) if pseudo_queries else None
    dataset = resolve_dataset(prof, dataset)
    train_towers(cfg, dataset, out, work=_work(out, work), pseudo=pseudo, resume=resume, log=typer.echo)
    typer.echo(f"teacher -> {out}")


@app.command("distill")
def distill_command(
    teacher: Annotated[str, typer.Option(help="Teacher: dual-tower directory (or any query encoder).")],
    out: Annotated[Path, typer.Option(help="Student tower directory to publish.")],
    index: Annotated[Path | None, typer.Option(help="Teacher index: adds top-10 agreement to the curves.")] = None,
    profile: ProfileOpt = "cpu",
    dataset: DatasetOpt = None,
    work: Annotated[Path | None, typer.Option(help="Checkpoints, teacher-embedding cache, curves.")] = None,
    student: Annotated[
        str | None,
        typer.Option(help="Student backbone: built-in, HF encoder directory, or 'teacher' (its own query tower)."),
    ] = None,
    layers: Annotated[int | None, typer.Option(min=1, help="Student layers kept from its backbone.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimisation steps.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    max_queries: Annotated[int | None, typer.Option(min=1, help="Use at most this many queries.")] = None,
    max_steps: MaxSteps = None,
) -> None:
    """Stage 2: distil the teacher's query tower into a small student that queries the teacher's index."""
    from training.distill import distill
    from training.pipeline import resolve_dataset
    from training.profiles import get_profile

    prof = get_profile(profile).capped(max_steps, max_queries)
    cfg = _updated(prof.distill, steps=steps, lr=lr)
    cfg.student = _updated(cfg.student, backbone=student, layers=layers)
    distill(cfg, teacher, resolve_dataset(prof, dataset), out, work=_work(out, work), index=index, log=typer.echo)
    typer.echo(f"student -> {out}")


@app.command("end2end")
def end2end_command(
    out: Annotated[Path, typer.Option(help="Baseline dual-tower directory to publish (index it with its doc tower).")],
    profile: ProfileOpt = "cpu",
    dataset: DatasetOpt = None,
    work: Annotated[Path | None, typer.Option(help="Checkpoints and curves (default: .<out>.work).")] = None,
    layers: Annotated[int | None, typer.Option(min=1, help="Student size: backbone layers kept.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimisation steps.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--restart", help="Continue from the last checkpoint, or discard it.")
    ] = True,
    max_steps: MaxSteps = None,
) -> None:
    """Paper baseline: the student's architecture trained as an ordinary dual tower on the teacher's pairs."""
    from training.pipeline import resolve_dataset
    from training.profiles import get_profile, small_dual
    from training.towers import train_towers

    prof = get_profile(profile).capped(max_steps)
    base = prof.end2end or small_dual(prof.towers, prof.distill.student)
    cfg = _updated(base, layers=layers, steps=steps)
    dataset = resolve_dataset(prof, dataset)
    train_towers(cfg, dataset, out, work=_work(out, work), resume=resume, log=typer.echo)
    typer.echo(f"end-to-end dual tower -> {out} (index it: scalingnote index build --doc-encoder {out} ...)")


@app.command("query-finetune")
def query_finetune_command(
    index: Annotated[Path, typer.Option(help="Teacher index whose frozen doc vectors the student learns to query.")],
    out: Annotated[Path, typer.Option(help="Student directory to publish.")],
    profile: ProfileOpt = "gpu",
    dataset: DatasetOpt = None,
    work: Annotated[Path | None, typer.Option(help="Checkpoints and curves.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimisation steps.")] = None,
    max_steps: MaxSteps = None,
) -> None:
    """Extra baseline: train the student on relevance labels against the frozen teacher doc index."""
    from training.pipeline import resolve_dataset
    from training.profiles import get_profile
    from training.query_finetune import FinetuneConfig, train_query_finetune

    prof = get_profile(profile).capped(max_steps)
    cfg = _updated(prof.finetune or FinetuneConfig(), steps=steps)
    train_query_finetune(cfg, index, resolve_dataset(prof, dataset), out, work=_work(out, work), log=typer.echo)
    typer.echo(f"fine-tuned student -> {out}")


@app.command("doc2query")
def doc2query_command(
    out: Annotated[Path, typer.Option(help="JSONL cache to fill (resumed if present).")],
    profile: ProfileOpt = "gpu",
    dataset: DatasetOpt = None,
    per_doc: Annotated[int | None, typer.Option(min=1, help="Queries generated per document.")] = None,
) -> None:
    """Generate pseudo-queries for every document with an instruction-tuned LLM."""
    from scalingnote.beir import load_corpus
    from training.doc2query import Doc2QueryConfig, generate_queries
    from training.pipeline import resolve_dataset
    from training.profiles import get_profile

    prof = get_profile(profile)
    cfg = _updated(prof.doc2query or Doc2QueryConfig(), per_doc=per_doc)
    corpus = load_corpus(resolve_dataset(prof, dataset) / "corpus.jsonl")
    done = generate_queries(cfg, corpus, out)
    typer.echo(f"{sum(map(len, done.values()))} queries for {len(done)} documents -> {out}")


@app.command("profiles")
def profiles_command() -> None:
    """List the pipeline profiles."""
    from training.profiles import PROFILES

    for name, prof in PROFILES.items():
        typer.echo(f"{name:8} {prof.description}")


def pipeline_command(
    out: Annotated[Path, typer.Option(help="Output root (teacher/, teacher-index/, student/, bundle/, report.md).")],
    profile: ProfileOpt = "cpu",
    dataset: DatasetOpt = None,
    baseline_index: Annotated[
        Path | None, typer.Option(help="Reuse an existing index of the profile's off-the-shelf baseline encoder.")
    ] = None,
    max_steps: MaxSteps = None,
    max_queries: Annotated[int | None, typer.Option(min=8, help="Cap the distillation queries (smoke).")] = None,
    nproc: Annotated[int | None, typer.Option(min=1, help="Stage-1 ranks (torchrun), e.g. one per GPU.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run a whole profile: teacher → teacher index → student → ONNX bundle → baselines → report.md."""
    from training.pipeline import run_pipeline
    from training.profiles import get_profile

    prof = get_profile(profile).capped(max_steps, max_queries)
    if nproc is not None:
        prof.nproc = nproc
    report = run_pipeline(
        prof,
        out,
        dataset=dataset,
        baseline_index=baseline_index,
        max_steps=max_steps,
        progress=progress,
        log=typer.echo,
    )
    typer.echo(f"report -> {report}")


def export_command(
    model: Annotated[str, typer.Option(help="Student/tower/teacher directory or built-in whose query side to export.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to publish (replaced atomically if present).")],
    index: Annotated[
        Path | None, typer.Option(help="Index the bundle will query: checked for space match, used by the gates.")
    ] = None,
    queries: Annotated[
        Path | None, typer.Option(help="Held-out queries (queries.jsonl or qid<TAB>text) for the gates.")
    ] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="Other queries (not the held-out ones) to calibrate int8 smoothing on.")
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
        calibration=list(load_queries(calibration).values()) if calibration else [],
        int8=int8,
        min_parity=min_parity,
        min_overlap=min_overlap,
        log=typer.echo,
    )
    typer.echo(f"bundle {manifest.name} ({', '.join(manifest.variants)}) -> {out}")
