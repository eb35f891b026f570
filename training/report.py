"""The pipeline's ``report.md`` / ``report.json`` / ``report.png``: quality, latency and size of every system.

Every row is typed (role, stage, layers, engine), so targets and figures select rows by what they are,
never by their label.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from scalingnote.artifacts import now_iso, read_bundle_manifest
from scalingnote.beir import load_dataset
from scalingnote.evaluation.metrics import evaluate
from scalingnote.training.render import render

Role = Literal["bm25", "baseline", "teacher", "student", "end2end", "finetune"]


@dataclass
class Row:
    """One measured system. ``stage`` names the pipeline artifact; ``variant`` is ``torch`` or a bundle variant."""

    role: Role
    stage: str
    encoder: str
    index: str
    variant: str = "torch"
    layers: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] | None = None
    params: int | None = None
    engine: str = ""
    system: str = ""

    @property
    def onnx(self) -> bool:
        return self.variant != "torch"


def label(row: Row, baseline: str | None) -> str:
    """The human name of a row, from its typed fields."""
    onnx = f", ONNX {row.variant}" if row.onnx else " (torch)"
    size = f"{row.layers}-layer " if row.layers else ""
    if row.role == "bm25":
        return "BM25"
    if row.role == "baseline":
        return f"{baseline} off the shelf"
    if row.role == "teacher":
        return "teacher query tower, ONNX fp32" if row.onnx else "teacher: stage-1 query tower (torch)"
    if row.role == "student":
        return f"distilled {size}student{onnx}"
    if row.role == "end2end":
        return f"end-to-end {size}dual tower{onnx}"
    return f"student fine-tuned on labels, teacher index{onnx}"


def systems(run, baseline_index: Path | None) -> list[Row]:
    """Every dense system the run produced, unmeasured, in report order."""
    p, lay = run.profile, run.lay
    teacher_index = str(lay.teacher_index)
    rows = []
    if p.baseline is not None and baseline_index is not None:
        rows.append(Row("baseline", "baseline", p.baseline, str(baseline_index), "fp32"))
    rows.append(Row("teacher", "teacher", str(lay.teacher), teacher_index))
    if lay.teacher_bundle.is_dir():
        rows.append(Row("teacher", "teacher-bundle", str(lay.teacher_bundle), teacher_index, "fp32"))
    for name, cfg in p.students():
        layers, bundle = cfg.student.layers, lay.bundle_dir(name)
        rows.append(Row("student", name, str(lay.student_dir(name)), teacher_index, layers=layers))
        for variant in read_bundle_manifest(bundle).variants:
            rows.append(Row("student", bundle.name, str(bundle), teacher_index, variant, layers))
    if p.end2end is not None and lay.end2end.is_dir():
        rows.append(Row("end2end", "end2end", str(lay.end2end), str(lay.end2end_index), layers=p.end2end.layers))
    if p.finetune is not None and lay.finetune.is_dir():
        rows.append(Row("finetune", "finetune", str(lay.finetune), teacher_index, layers=p.finetune.student.layers))
    return rows


def measure(run, baseline_index: Path | None) -> list[Row]:
    """nDCG@10, Recall@100 and MRR@10 on the test split, and batch-1 encode latency, of every system."""
    from scalingnote.evaluation.bm25 import bm25_run
    from scalingnote.evaluation.dense import dense_run
    from scalingnote.training.latency import load_timed, time_queries

    ds = load_dataset(run.dataset, ("test",))
    queries, qrels = ds.split_queries("test"), ds.qrels["test"]
    bm25 = Row("bm25", "bm25", "bm25s (Lucene k1=0.9 b=0.4)", "-", "-")
    bm25.metrics = evaluate(qrels, bm25_run(ds.corpus, queries))
    rows = systems(run, baseline_index)
    for row in rows:
        variant = "fp32" if row.variant == "torch" else row.variant
        row.metrics = evaluate(qrels, dense_run(Path(row.index), row.encoder, queries, variant=variant)[0])
        run.log(f"[report] {label(row, run.profile.baseline)}: nDCG@10 {row.metrics['ndcg@10']:.4f}")
    for row in rows:
        enc = load_timed(row.encoder, "fp32" if row.variant == "torch" else row.variant, run.profile.latency_threads)
        row.latency = time_queries(enc.encode, list(queries.values()), batch_size=1)
        row.params, row.engine = enc.params, enc.engine
    rows = [bm25, *rows]
    for row in rows:
        row.system = label(row, run.profile.baseline)
    return rows


def search_latency(index: Path, threads: int) -> dict[str, float]:
    """Exact top-100 FAISS search alone, one query vector at a time (the same for every row of one index)."""
    from scalingnote.index.store import LoadedIndex
    from scalingnote.training.latency import pin_faiss_threads, time_queries

    pin_faiss_threads(threads)
    loaded = LoadedIndex.load(index)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((256, loaded.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return time_queries(lambda rows: rows[0], [v[None] for v in vecs], search=lambda v: loaded.search(v, 100))


def find(rows: list[Row], role: Role, onnx: bool | None = None, layers: int | None = None) -> list[Row]:
    """The rows of one role (and backend, and size, when given), in report order."""
    return [
        r
        for r in rows
        if r.role == role and (onnx is None or r.onnx == onnx) and (layers is None or r.layers == layers)
    ]


def targets(rows: list[Row]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets, per student size: (target, met or None when not measurable here, figures)."""
    teacher, t_onnx = find(rows, "teacher", onnx=False), find(rows, "teacher", onnx=True)
    if not teacher:
        return []
    t = teacher[0].metrics["ndcg@10"]
    out: list[tuple[str, bool | None, str]] = [("teacher nDCG@10 ≥ 0.68", t >= 0.68, f"{t:.4f}")]
    e2e = find(rows, "end2end")
    sizes = sorted({r.layers for r in find(rows, "student") if r.layers}, reverse=True)
    for size in sizes:
        s = find(rows, "student", onnx=False, layers=size)[0].metrics["ndcg@10"]
        out.append((f"distilled {size}-layer student ≥ 97% of the teacher", s >= 0.97 * t, f"{s:.4f} = {s / t:.1%}"))
        if e2e and e2e[0].layers == size:
            e = e2e[0].metrics["ndcg@10"]
            out.append((f"distilled {size}-layer student > {size}-layer end to end", s > e, f"{s:.4f} vs {e:.4f}"))
        onnx = [r for r in find(rows, "student", onnx=True, layers=size) if r.latency]
        if t_onnx and t_onnx[0].latency and onnx:
            best = min(onnx, key=lambda r: r.latency["p50_ms"])
            ratio = best.latency["p50_ms"] / t_onnx[0].latency["p50_ms"]
            what = f"{size}-layer student latency ≤ 40% of the teacher's (ONNX, batch 1, p50; {best.engine})"
            out.append(
                (
                    what,
                    ratio <= 0.40,
                    f"{best.latency['p50_ms']:.1f} / {t_onnx[0].latency['p50_ms']:.1f} ms = {ratio:.0%}",
                )
            )
    if not e2e:
        out.append(("distilled student > the same student end to end", None, "no end-to-end run in this profile"))
    return out


def chart(rows: list[Row], path: Path, title: str) -> None:
    """nDCG@10 against query latency p50 (batch 1) for every dense row: the quality/latency trade-off."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        if r.latency:
            ax.scatter(r.latency["p50_ms"], r.metrics["ndcg@10"])
            point = (r.latency["p50_ms"], r.metrics["ndcg@10"])
            ax.annotate(r.system, point, fontsize=7, xytext=(4, 2), textcoords="offset points")
    for bm25 in find(rows, "bm25"):
        ax.axhline(bm25.metrics["ndcg@10"], linestyle="--", color="grey", label="BM25")
        ax.legend()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("query-encoding latency p50, ms (batch 1, 1 thread, log scale)")
    ax.set_ylabel("SciFact test nDCG@10")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(run, done, baseline_index: Path | None, t_start: float, load_start: float) -> Path:
    """Measure every system, then write ``report.md``, ``report.json`` and ``report.png``; returns report.md."""
    t0 = time.monotonic()
    rows = measure(run, baseline_index)
    search = search_latency(run.lay.teacher_index, run.profile.latency_threads)
    done.seconds["report"] = time.monotonic() - t0
    wall = time.monotonic() - t_start
    n_queries = len(load_dataset(run.dataset, ("test",)).qrels["test"])
    load = (load_start, os.getloadavg()[0])
    root = run.lay.root
    text = render(run, rows, targets(rows), done, wall, load, n_queries, search)
    chart(rows, root / "report.png", f"ScalingNote `{run.profile.name}` profile, {run.dataset.name} test")
    (root / "report.md").write_text(text, encoding="utf-8")
    payload = {
        "profile": run.profile.model_dump(),
        "dataset": str(run.dataset),
        "rows": [asdict(r) for r in rows],
        "targets": [{"target": t, "met": m, "measured": f} for t, m, f in targets(rows)],
        "search_latency": search,
        "stage_seconds": done.seconds,
        "skipped": done.skipped,
        "wall_seconds": wall,
        "finished_at": now_iso(),
    }
    (root / "report.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    run.log(text)
    return root / "report.md"
