"""``report.md``: the pipeline report's text, section by section, from measured rows."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scalingnote.training.report import Row

from scalingnote.artifacts import now_iso, read_bundle_manifest


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def render(run, rows: list[Row], targets, done, wall_s: float, load, n_queries: int, search: dict) -> str:
    """The whole report: header, results table, targets, stage times, details and artifact paths."""
    sections = [
        header(run, done, wall_s, load, n_queries),
        results(rows, run.profile.latency_threads, search),
        targets_table(targets),
        stages_table(done),
        details(run),
        artifacts(run.lay),
    ]
    return "\n".join(line for section in sections for line in section)


def header(run, done, wall_s: float, load, n_queries: int) -> list[str]:
    skipped = f" (skipped, up to date: {', '.join(done.skipped)})" if done.skipped else ""
    return [
        f"# ScalingNote pipeline report: profile `{run.profile.name}`",
        "",
        f"{run.profile.description}",
        "",
        f"- dataset: `{run.dataset}`, test split ({n_queries} judged queries)",
        f"- machine: {os.cpu_count()} CPU(s), {cpu_model()}; load average {load[0]:.1f} at start, {load[1]:.1f} at end",
        f"- finished {now_iso()}; wall time of this run **{wall_s / 60:.1f} min**; "
        f"sum of stage times {sum(done.seconds.values()) / 60:.1f} min" + skipped,
        "",
    ]


def results(rows: list[Row], threads: int, search: dict) -> list[str]:
    lines = [
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
    return [
        *lines,
        "",
        f"Latency: query encoding, one query at a time (batch 1), {threads} thread(s) for torch and ONNX Runtime,"
        " median and p99 over the test queries (tokenisation included). The exact top-100 FAISS search of the"
        f" teacher index adds {search['p50_ms']:.2f} ms p50 / {search['p99_ms']:.2f} ms p99 ({threads} thread(s)).",
        "Query params: weights of the query-side encoder (the doc tower and index are shared by the teacher and"
        " its students).",
        "",
    ]


def targets_table(targets) -> list[str]:
    lines = ["## Targets", "", "| target | met | measured |", "|---|---|---|"]
    for what, met, figure in targets:
        lines.append(f"| {what} | {'n/a' if met is None else ('yes' if met else '**no**')} | {figure} |")
    return [*lines, "", "![nDCG@10 against query latency](report.png)", ""]


def stages_table(done) -> list[str]:
    lines = ["## Stages", "", "| stage | minutes | |", "|---|---|---|"]
    lines += [
        f"| {name} | {s / 60:.1f} | {'skipped (up to date)' if name in done.skipped else ''} |"
        for name, s in done.seconds.items()
    ]
    return [*lines, ""]


def details(run) -> list[str]:
    lay = run.lay
    lines = ["## Details", ""]
    teacher = read_json(lay.teacher / "train.json")
    if teacher:
        cfg = teacher["config"]
        lines.append(
            f"- teacher: `{cfg['backbone']}` {'shared' if cfg['shared'] else 'separate'} towers, {cfg['steps']} steps"
            f" × batch {cfg['batch_size']} ({cfg['negatives']} hard negative(s)/query), {teacher['examples']}"
            f" training pairs, {teacher['train_seconds'] / 60:.1f} min of training"
        )
    for name, _ in run.profile.students():
        lines += student_details(name, lay.student_dir(name), lay.bundle_dir(name))
    e2e = read_json(lay.end2end / "train.json")
    if e2e:
        cfg = e2e["config"]
        lines.append(
            f"- end-to-end: first {cfg['layers']} layers of `{cfg['backbone']}` as separate query/doc towers, the"
            f" teacher's recipe ({cfg['steps']} steps × batch {cfg['batch_size']}, same pairs),"
            f" {e2e['train_seconds'] / 60:.1f} min of training; queries its own doc tower's index"
        )
    return [*lines, ""]


def student_details(name: str, student_dir: Path, bundle_dir: Path) -> list[str]:
    lines = []
    student = read_json(student_dir / "train.json")
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
        gates = ", ".join(f"{k} {v:.4f}" for k, v in bundle.gates.items())
        lines.append(f"- `{bundle_dir.name}` export gates: {gates}; variants kept: {', '.join(bundle.variants)}")
        quant = read_json(bundle_dir / "quantization.json")
        if quant:
            lines.append(f"- `{bundle_dir.name}` int8: {quant.get('summary', '')}")
    return lines


def artifacts(lay) -> list[str]:
    return [
        "## Artifacts",
        "",
        f"- teacher (dual tower): `{lay.teacher}`",
        f"- teacher index: `{lay.teacher_index}`",
        f"- student bundle (serve this with the teacher index): `{lay.bundle_dir('student')}`",
        f"- curves: `{lay.curves}/*.png` (JSONL next to them)",
        "",
    ]
