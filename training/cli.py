"""Training-side commands: ``scalingnote train …``, ``scalingnote pipeline`` and ``scalingnote export``.

Every training command reads its hyper-parameters from a profile (``--profile NAME`` or ``--profile-file
FILE``) and takes overrides of any field with ``--set a.b=value``. Heavy imports (torch, transformers) happen
inside the commands: the CLI module itself stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Train teachers (stage 1), distil students (stage 2), baselines.")

ProfileName = Annotated[
    str, typer.Option("--profile", help="Built-in profile name (`scalingnote train profiles` lists them).")
]
ProfileFile = Annotated[Path | None, typer.Option(help="A profile TOML file (instead of --profile).")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a profile field: FIELD.PATH=VALUE (TOML value), e.g. towers.lr=5e-5."),
]
DatasetOpt = Annotated[Path | None, typer.Option(help="BEIR dataset directory (default: the profile's dataset).")]
WorkOpt = Annotated[Path | None, typer.Option(help="Checkpoints, caches and curves (default: .<out>.work).")]
MaxSteps = Annotated[int | None, typer.Option(min=1, help="Cap every training stage at this many steps (smoke).")]
MaxQueries = Annotated[int | None, typer.Option(min=8, help="Cap the distillation queries (smoke).")]
Resume = Annotated[bool, typer.Option("--resume/--restart", help="Continue from the last checkpoint, or discard it.")]


def _profile(name: str, file: Path | None, overrides: list[str] | None, max_steps=None, max_queries=None):
    from scalingnote.training.profiles import load_profile

    return load_profile(name, file, overrides).capped(max_steps, max_queries)


def _work(out: Path, work: Path | None) -> Path:
    return work or out.parent / f".{out.name}.work"


def _dataset(prof, dataset: Path | None) -> Path:
    from scalingnote.training.pipeline import resolve_dataset

    return resolve_dataset(prof, dataset)


@app.command("towers")
def towers_command(
    out: Annotated[Path, typer.Option(help="Teacher (dual tower) directory to publish.")],
    profile: ProfileName = "cpu",
    profile_file: ProfileFile = None,
    overrides: Overrides = None,
    dataset: DatasetOpt = None,
    work: WorkOpt = None,
    resume: Resume = True,
    pseudo_queries: Annotated[
        Path | None, typer.Option(help="doc2query JSONL cache whose queries become extra training pairs.")
    ] = None,
    max_steps: MaxSteps = None,
) -> None:
    """Stage 1: train query and doc towers (the profile's [towers]; run under torchrun for cross-rank negatives)."""
    from scalingnote.training.doc2query import read_cache
    from scalingnote.training.towers import train_towers

    prof = _profile(profile, profile_file, overrides, max_steps)
    pseudo = read_cache(pseudo_queries) if pseudo_queries else None
    ds = _dataset(prof, dataset)
    options = {"pseudo": pseudo, "resume": resume, "log": typer.echo, "runtime": prof.encode_runtime}
    train_towers(prof.towers, ds, out, work=_work(out, work), **options)
    typer.echo(f"teacher -> {out}")


@app.command("distill")
def distill_command(
    teacher: Annotated[str, typer.Option(help="Teacher: dual-tower directory (or any query encoder).")],
    out: Annotated[Path, typer.Option(help="Student tower directory to publish.")],
    index: Annotated[Path | None, typer.Option(help="Teacher index: adds top-10 agreement to the curves.")] = None,
    profile: ProfileName = "cpu",
    profile_file: ProfileFile = None,
    overrides: Overrides = None,
    dataset: DatasetOpt = None,
    work: WorkOpt = None,
    max_steps: MaxSteps = None,
    max_queries: MaxQueries = None,
) -> None:
    """Stage 2: distil the teacher's query tower into a small student (the profile's [distill])."""
    from scalingnote.training.distill import distill

    prof = _profile(profile, profile_file, overrides, max_steps, max_queries)
    ds, runtime = _dataset(prof, dataset), prof.encode_runtime
    distill(prof.distill, teacher, ds, out, work=_work(out, work), index=index, log=typer.echo, runtime=runtime)
    typer.echo(f"student -> {out}")


@app.command("end2end")
def end2end_command(
    out: Annotated[Path, typer.Option(help="Baseline dual-tower directory to publish (index it with its doc tower).")],
    profile: ProfileName = "cpu",
    profile_file: ProfileFile = None,
    overrides: Overrides = None,
    dataset: DatasetOpt = None,
    work: WorkOpt = None,
    resume: Resume = True,
    max_steps: MaxSteps = None,
) -> None:
    """Paper baseline: the student's architecture trained as an ordinary dual tower on the teacher's pairs."""
    from scalingnote.training.profiles import small_dual
    from scalingnote.training.towers import train_towers

    prof = _profile(profile, profile_file, overrides, max_steps)
    cfg = prof.end2end or small_dual(prof.towers, prof.distill.student)
    ds, runtime = _dataset(prof, dataset), prof.encode_runtime
    train_towers(cfg, ds, out, work=_work(out, work), resume=resume, log=typer.echo, runtime=runtime)
    typer.echo(f"end-to-end dual tower -> {out} (index it: scalingnote index build --doc-encoder {out} ...)")


@app.command("query-finetune")
def query_finetune_command(
    index: Annotated[Path, typer.Option(help="Teacher index whose frozen doc vectors the student learns to query.")],
    out: Annotated[Path, typer.Option(help="Student directory to publish.")],
    profile: ProfileName = "gpu",
    profile_file: ProfileFile = None,
    overrides: Overrides = None,
    dataset: DatasetOpt = None,
    work: WorkOpt = None,
    max_steps: MaxSteps = None,
) -> None:
    """Extra baseline: train the student on relevance labels against the frozen teacher doc index."""
    from scalingnote.training.query_finetune import FinetuneConfig, train_query_finetune

    prof = _profile(profile, profile_file, overrides, max_steps)
    cfg = prof.finetune or FinetuneConfig()
    train_query_finetune(cfg, index, _dataset(prof, dataset), out, work=_work(out, work), log=typer.echo)
    typer.echo(f"fine-tuned student -> {out}")


@app.command("doc2query")
def doc2query_command(
    out: Annotated[Path, typer.Option(help="JSONL cache to fill (resumed if present).")],
    profile: ProfileName = "gpu",
    profile_file: ProfileFile = None,
    overrides: Overrides = None,
    dataset: DatasetOpt = None,
) -> None:
    """Generate pseudo-queries for every document with an instruction-tuned LLM (the profile's [doc2query])."""
    from scalingnote.beir import load_corpus
    from scalingnote.training.doc2query import Doc2QueryConfig, generate_queries

    prof = _profile(profile, profile_file, overrides)
    corpus = load_corpus(_dataset(prof, dataset) / "corpus.jsonl")
    done = generate_queries(prof.doc2query or Doc2QueryConfig(), corpus, out)
    typer.echo(f"{sum(map(len, done.values()))} queries for {len(done)} documents -> {out}")


@app.command("profiles")
def profiles_command(
    name: Annotated[str | None, typer.Argument(help="Print this profile as TOML (a start for --profile-file).")] = None,
    profile_file: ProfileFile = None,
    overrides: Overrides = None,
) -> None:
    """List the built-in pipeline profiles, or print one (with --set applied) as a TOML profile file."""
    from scalingnote.training.profiles import builtin_profiles, load_profile, profile_toml

    if name is None and profile_file is None:
        for key in builtin_profiles():
            typer.echo(f"{key:8} {load_profile(key).description}")
        return
    typer.echo(profile_toml(load_profile(name or "", profile_file, overrides)), nl=False)


def pipeline_command(
    out: Annotated[Path, typer.Option(help="Output root (teacher/, teacher-index/, student/, bundle/, report.md).")],
    profile: ProfileName = "cpu",
    profile_file: ProfileFile = None,
    overrides: Overrides = None,
    dataset: DatasetOpt = None,
    max_steps: MaxSteps = None,
    max_queries: MaxQueries = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run a whole profile: teacher → teacher index → students → ONNX bundles → baselines → report.md."""
    from scalingnote.training.pipeline import run_pipeline

    prof = _profile(profile, profile_file, overrides, max_steps, max_queries)
    report = run_pipeline(prof, out, dataset=dataset, progress=progress, log=typer.echo)
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
    from scalingnote.training.export import export_bundle

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
