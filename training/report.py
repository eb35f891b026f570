"""The pipeline's ``report.md`` / ``report.json``: quality, latency and size of every system, stage timings."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from evaluation.metrics import evaluate
from scalingnote.artifacts import now_iso, read_bundle_manifest
from scalingnote.beir import load_dataset
from training.profiles import Profile


@dataclass
class Row:
    system: str
    encoder: str
    index: str
    metrics: dict[str, float]
    latency: dict[str, float] | None = None
    params: int | None = None
    engine: str = ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def dense_rows(lay, profile: Profile, baseline_index: Path | None) -> list[tuple[str, str, str, Path]]:
    """(label, encoder spec, variant, index) for every dense system the run produced."""
    rows = []
    if profile.baseline is not None and baseline_index is not None:
        rows.append((f"{profile.baseline} off the shelf", profile.baseline, "fp32", baseline_index))
    rows.append(("teacher: stage-1 query tower (torch)", str(lay.teacher), "fp32", lay.teacher_index))
    if lay.teacher_bundle.is_dir():
        rows.append(("teacher query tower, ONNX fp32", str(lay.teacher_bundle), "fp32", lay.teacher_index))
    for name, cfg in profile.students():
        size = f"{cfg.student.layers}-layer"
        rows.append((f"distilled {size} student (torch)", str(lay.student_dir(name)), "fp32", lay.teacher_index))
        bundle = lay.bundle_dir(name)
        for variant in read_bundle_manifest(bundle).variants:
            rows.append((f"distilled {size} student, ONNX {variant}", str(bundle), variant, lay.teacher_index))
    if profile.end2end is not None and lay.end2end.is_dir():
        layers = profile.end2end.layers
        label = f"end-to-end {layers}-layer dual tower (torch)" if layers else "end-to-end dual tower (torch)"
        rows.append((label, str(lay.end2end), "fp32", lay.end2end_index))
    if profile.finetune is not None and lay.finetune.is_dir():
        rows.append(
            ("student fine-tuned on labels, teacher index (torch)", str(lay.finetune), "fp32", lay.teacher_index)
        )
    return rows


def measure(lay, profile: Profile, dataset: Path, baseline_index: Path | None, log) -> list[Row]:
    from evaluation.bm25 import bm25_run
    from evaluation.dense import dense_run
    from training.latency import load_encoder, time_queries

    ds = load_dataset(dataset, ("test",))
    queries, qrels = ds.split_queries("test"), ds.qrels["test"]
    rows = [Row("BM25", "bm25s (Lucene k1=0.9 b=0.4)", "-", evaluate(qrels, bm25_run(ds.corpus, queries)))]
    systems = dense_rows(lay, profile, baseline_index)
    for label, spec, variant, index in systems:
        run, _ = dense_run(index, spec, queries, variant=variant)
        rows.append(Row(label, spec, str(index), evaluate(qrels, run)))
        log(f"[report] {label}: nDCG@10 {rows[-1].metrics['ndcg@10']:.4f}")
    texts = list(queries.values())
    for row, (_, spec, variant, _) in zip(rows[1:], systems, strict=True):
        enc = load_encoder(spec, variant, threads=profile.latency_threads)
        row.latency = time_queries(enc.encode, texts, batch_size=1)
        row.params, row.engine = enc.params, enc.engine
    return rows


def search_latency(index: Path, threads: int) -> dict[str, float]:
    """Exact top-100 FAISS search alone, one query vector at a time (the same for every row of one index)."""
    from index.store import LoadedIndex
    from training.latency import pin_faiss_threads, time_queries

    pin_faiss_threads(threads)
    loaded = LoadedIndex.load(index)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((256, loaded.manifest.doc_tower.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return time_queries(lambda rows: rows[0], [v[None] for v in vecs], search=lambda v: loaded.search(v, 100))


def _find(rows: list[Row], prefix: str, engine: str | None = None) -> Row | None:
    return next((r for r in rows if r.system.startswith(prefix) and (engine is None or r.engine == engine)), None)


def targets(rows: list[Row]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets, per student size: (target, met or None when not measurable here, figures)."""
    out: list[tuple[str, bool | None, str]] = []
    teacher = _find(rows, "teacher: stage-1")
    t_onnx = _find(rows, "teacher query tower, ONNX")
    e2e = _find(rows, "end-to-end")
    if teacher is None:
        return out
    t = teacher.metrics["ndcg@10"]
    out.append(("teacher nDCG@10 ≥ 0.68", t >= 0.68, f"{t:.4f}"))
    sizes = sorted({m.group(1) for r in rows if (m := re.match(r"distilled (\d+)-layer", r.system))}, reverse=True)
    for size in sizes:
        student = _find(rows, f"distilled {size}-layer student (torch)")
        if student is None:
            continue
        s = student.metrics["ndcg@10"]
        out.append((f"distilled {size}-layer student ≥ 97% of the teacher", s >= 0.97 * t, f"{s:.4f} = {s / t:.1%}"))
        if e2e is not None and e2e.system.startswith(f"end-to-end {size}-layer"):
            e = e2e.metrics["ndcg@10"]
            out.append((f"distilled {size}-layer student > {size}-layer end to end", s > e, f"{s:.4f} vs {e:.4f}"))
        onnx = [r for r in rows if r.system.startswith(f"distilled {size}-layer student, ONNX") and r.latency]
        if t_onnx is not None and t_onnx.latency and onnx:
            best = min(onnx, key=lambda r: r.latency["p50_ms"])
            ratio = best.latency["p50_ms"] / t_onnx.latency["p50_ms"]
            out.append(
                (
                    f"{size}-layer student latency ≤ 40% of the teacher's (ONNX, batch 1, p50; {best.engine})",
                    ratio <= 0.40,
                    f"{best.latency['p50_ms']:.1f} / {t_onnx.latency['p50_ms']:.1f} ms = {ratio:.0%}",
                )
            )
    if e2e is None:
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
            ax.annotate(
                r.system,
                (r.latency["p50_ms"], r.metrics["ndcg@10"]),
                fontsize=7,
                xytext=(4, 2),
                textcoords="offset points",
            )
    bm25 = _find(rows, "BM25")
    if bm25 is not None:
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


def render(
    profile: Profile,
    lay,
    dataset: Path,
    rows: list[Row],
    stages,
    wall_s: float,
    load: tuple[float, float],
    n_queries: int,
    search: dict[str, float],
) -> str:
    threads = profile.latency_threads
    lines = [
        f"# ScalingNote pipeline report: profile `{profile.name}`",
        "",
        f"{profile.description}",
        "",
        f"- dataset: `{dataset}`, test split ({n_queries} judged queries)",
        f"- machine: {os.cpu_count()} CPU(s), {cpu_model()}; load average {load[0]:.1f} at start, {load[1]:.1f} at end",
        f"- finished {now_iso()}; wall time of this run **{wall_s / 60:.1f} min**; "
        f"sum of stage times {sum(stages.seconds.values()) / 60:.1f} min"
        + (f" (skipped, up to date: {', '.join(stages.skipped)})" if stages.skipped else ""),
        "",
        "| system | nDCG@10 | Recall@100 | MRR@10 | latency p50 / p99 ms | query params | engine |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = f"{r.latency['p50_ms']:.1f} / {r.latency['p99_ms']:.1f}" if r.latency else "-"
        params = f"{r.params / 1e6:.1f} M" if r.params else "-"
        m = r.metrics
        lines.append(
            f"| {r.system} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr@10']:.4f} | {lat} | {params} | "
            f"{r.engine or '-'} |"
        )
    lines += [
        "",
        f"Latency: query encoding, one query at a time (batch 1), {threads} thread(s) for torch and ONNX Runtime,"
        " median and p99 over the test queries (tokenisation included). The exact top-100 FAISS search of the"
        f" teacher index adds {search['p50_ms']:.2f} ms p50 / {search['p99_ms']:.2f} ms p99 ({threads} thread(s)).",
        "Query params: weights of the query-side encoder (the doc tower and index are shared by the teacher and"
        " its students).",
        "",
        "## Targets",
        "",
        "| target | met | measured |",
        "|---|---|---|",
    ]
    for what, met, figure in targets(rows):
        lines.append(f"| {what} | {'n/a' if met is None else ('yes' if met else '**no**')} | {figure} |")
    lines += [
        "",
        "![nDCG@10 against query latency](report.png)",
        "",
        "## Stages",
        "",
        "| stage | minutes | |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {s / 60:.1f} | {'skipped (up to date)' if name in stages.skipped else ''} |"
        for name, s in stages.seconds.items()
    ]
    teacher = _read_json(lay.teacher / "train.json")
    lines += ["", "## Details", ""]
    if teacher:
        cfg = teacher["config"]
        lines.append(
            f"- teacher: `{cfg['backbone']}` {'shared' if cfg['shared'] else 'separate'} towers, {cfg['steps']} steps"
            f" × batch {cfg['batch_size']} ({cfg['negatives']} hard negative(s)/query), {teacher['examples']}"
            f" training pairs, {teacher['train_seconds'] / 60:.1f} min of training"
        )
    for name, _ in profile.students():
        student = _read_json(lay.student_dir(name) / "train.json")
        bundle_dir = lay.bundle_dir(name)
        if student:
            cfg, held = student["config"], student["heldout"]
            lines.append(
                f"- `{name}`: first {cfg['student']['layers']} layers of `{cfg['student']['backbone']}` + projection,"
                f" {cfg['steps']} steps × {cfg['batch_size']} on {student['queries']} queries; held-out agreement"
                f" with the teacher: cosine {held['heldout_cos']:.3f}, top-10 overlap"
                f" {held.get('heldout_top10_overlap', 0):.3f}"
            )
        if bundle_dir.is_dir():
            bundle = read_bundle_manifest(bundle_dir)
            gates = ", ".join(f"{k} {v:.4f}" for k, v in bundle.parity.items())
            lines.append(f"- `{bundle_dir.name}` export gates: {gates}; variants kept: {', '.join(bundle.variants)}")
            quant = _read_json(bundle_dir / "quantization.json")
            if quant:
                lines.append(f"- `{bundle_dir.name}` int8: {quant.get('summary', '')}")
    e2e = _read_json(lay.end2end / "train.json")
    if e2e:
        cfg = e2e["config"]
        lines.append(
            f"- end-to-end: first {cfg['layers']} layers of `{cfg['backbone']}` as separate query/doc towers, the"
            f" teacher's recipe ({cfg['steps']} steps × batch {cfg['batch_size']}, same pairs),"
            f" {e2e['train_seconds'] / 60:.1f} min of training; queries its own doc tower's index"
        )
    lines += [
        "",
        "## Artifacts",
        "",
        f"- teacher (dual tower): `{lay.teacher}`",
        f"- teacher index: `{lay.teacher_index}`",
        f"- student bundle (serve this with the teacher index): `{lay.bundle_dir('student')}`",
        f"- curves: `{lay.curves}/*.png` (JSONL next to them)",
        "",
    ]
    return "\n".join(lines)


def write_report(
    profile: Profile,
    lay,
    dataset: Path,
    stages,
    baseline_index: Path | None,
    t_start: float,
    load_start: float,
    log: Callable[[str], None] = print,
) -> Path:
    t0 = time.monotonic()
    rows = measure(lay, profile, dataset, baseline_index, log)
    search = search_latency(lay.teacher_index, profile.latency_threads)
    stages.seconds["report"] = time.monotonic() - t0
    wall = time.monotonic() - t_start
    n_queries = len(load_dataset(dataset, ("test",)).qrels["test"])
    load = (load_start, os.getloadavg()[0])
    text = render(profile, lay, dataset, rows, stages, wall, load, n_queries, search)
    chart(rows, lay.root / "report.png", f"ScalingNote `{profile.name}` profile, {dataset.name} test")
    (lay.root / "report.md").write_text(text, encoding="utf-8")
    payload = {
        "profile": profile.model_dump(),
        "dataset": str(dataset),
        "rows": [asdict(r) for r in rows],
        "targets": [{"target": t, "met": m, "measured": f} for t, m, f in targets(rows)],
        "search_latency": search,
        "stage_seconds": stages.seconds,
        "skipped": stages.skipped,
        "wall_seconds": wall,
        "finished_at": now_iso(),
    }
    (lay.root / "report.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    log(text)
    return lay.root / "report.md"
