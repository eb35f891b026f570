"""``report.md``: the pipeline report's text, section by section, from measured rows."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from scalingnote.artifacts import now_iso, read_bundle_manifest
from scalingnote.training.rows import Row, fastest, find


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


def render(
    run, rows: list[Row], targets, done, wall_s: float, load, n_queries: int, search: dict, fits: dict | None = None
) -> str:
    """The whole report: header, results table, targets, stage times, details and artifact paths."""
    sections = [
        header(run, done, wall_s, load, n_queries),
        results(rows, run.profile.latency_threads, search),
        verdict(rows),
        ladder_table(rows, fits or {}),
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
        f"- encode-only passes (index builds, teacher labels) on `{run.profile.encode_runtime}`",
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
        name = f"**{r.system}** (served)" if r.served else r.system
        lines.append(
            f"| {name} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr@10']:.4f} | {lat} | {params} | "
            f"{r.engine or '-'} |"
        )
    return [
        *lines,
        "",
        f"Latency: query encoding, one query at a time (batch 1), {threads} thread(s) for torch and ONNX Runtime,"
        " median and p99 over the test queries (tokenisation included), each the median of rounds in which every"
        " system is timed in turn (every other round in reverse order). The exact top-100 FAISS search of the"
        f" teacher index adds {search['p50_ms']:.2f} ms p50 / {search['p99_ms']:.2f} ms p99 ({threads} thread(s)).",
        "Query params: weights of the query-side encoder (the doc tower and index are shared by the teacher and"
        " its students).",
        "",
    ]


def verdict(rows: list[Row]) -> list[str]:
    """One plain paragraph: where the served student stands against what a user could run instead."""
    served = next((r for r in rows if r.served), None)
    others = [r for r in rows if r.role in ("bm25", "baseline")]
    if served is None or not others:
        return []
    above = [f"{r.system} ({r.ndcg:.4f})" for r in others if served.ndcg > r.ndcg]
    below = [f"{r.system} ({r.ndcg:.4f})" for r in others if served.ndcg <= r.ndcg]
    text = f"**On this data**, the served student (`{served.stage}`, {served.engine}) scores {served.ndcg:.4f} nDCG@10"
    text += f": it beats {', '.join(above)}" if above else ""
    text += f"{' but' if above else ': it'} **falls below {', '.join(below)}**" if below else ""
    for hybrid in find(rows, "hybrid"):
        best = max([*others, served], key=lambda r: r.ndcg)
        verb = "beats" if hybrid.ndcg > best.ndcg else "does not beat"
        text += (
            f". Fused with BM25 (the served index's default `hybrid` mode, reciprocal-rank fusion) it scores "
            f"{hybrid.ndcg:.4f} and {verb} the best of them, {best.system} ({best.ndcg:.4f})"
        )
    return [text + ".", ""]


def _towers(cfg: dict) -> str:
    if cfg.get("doc_tower") == "frozen":
        return "query tower trained against its frozen doc tower (as released)"
    return "shared towers" if cfg["shared"] else "separate towers"


def ladder_table(rows: list[Row], fits: dict) -> list[str]:
    """With several teachers: each teacher and its students, side by side (nDCG@10, retention, latency)."""
    teachers = sorted(find(rows, "teacher", onnx=False), key=lambda r: r.params or 0)
    if len(teachers) < 2:
        return []
    sizes = sorted({r.layers for r in find(rows, "student") if r.layers}, reverse=True)
    head = "| teacher | params | teacher nDCG@10 | " + " | ".join(
        f"{n}-layer student: nDCG@10, kept, p50 ms" for n in sizes
    )
    lines = ["## Teacher ladder", "", head + " |", "|---|---|---|" + "---|" * len(sizes)]
    for t in teachers:
        cells = []
        for n in sizes:
            s = find(rows, "student", onnx=False, layers=n, teacher=t.teacher)
            fast = fastest(find(rows, "student", onnx=True, layers=n, teacher=t.teacher))
            lat = f"{fast.latency['p50_ms']:.1f} ({fast.engine})" if fast else "-"
            cells.append(f"{s[0].ndcg:.4f}, {s[0].ndcg / t.ndcg:.1%}, {lat}" if s else "-")
        lines.append(f"| {t.backbone} | {(t.params or 0) / 1e6:.1f} M | {t.ndcg:.4f} | " + " | ".join(cells) + " |")
    laws = [f"{name}: 1 − nDCG@10 = {a:.3f} · N^−{b:.3f} (N in M params)" for name, (a, b) in fits.items()]
    lines += ["", "Power-law fits over the teacher sizes: " + "; ".join(laws) + "."] if laws else []
    return [*lines, "", "![student nDCG@10 against teacher size](report-ladder.png)", ""]


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
    for name, _ in run.profile.teachers():
        teacher = read_json(lay.root / name / "train.json")
        if teacher:
            cfg = teacher["config"]
            lines.append(
                f"- `{name}`: `{cfg['backbone']}` {_towers(cfg)}, {cfg['steps']}"
                f" steps × batch {cfg['batch_size']} ({cfg['negatives']} hard negative(s)/query), {teacher['examples']}"
                f" training pairs, {teacher['train_seconds'] / 60:.1f} min of training"
            )
        for student, _ in run.profile.students(name):
            lines += student_details(student, lay.student_dir(student), lay.bundle_dir(student))
    e2e = read_json(lay.end2end / "train.json")
    if e2e:
        cfg = e2e["config"]
        lines.append(
            f"- end-to-end: layers {cfg['layers']} of `{cfg['backbone']}` as separate query/doc towers, the"
            f" teacher's recipe ({cfg['steps']} steps × batch {cfg['batch_size']}, same pairs),"
            f" {e2e['train_seconds'] / 60:.1f} min of training; queries its own doc tower's index"
        )
    return [*lines, ""]


def student_details(name: str, student_dir: Path, bundle_dir: Path) -> list[str]:
    lines = []
    student = read_json(student_dir / "train.json")
    if student:
        cfg, held = student["config"], student["heldout"]
        layers = cfg["student"]["layers"]
        shape = "the token table (static, mean-pooled)" if not layers else f"layers {layers}"
        lines.append(
            f"- `{name}`: {shape} of `{cfg['student']['backbone']}` + projection,"
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
