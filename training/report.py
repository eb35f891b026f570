"""The pipeline's ``report.md`` / ``report.json`` / ``report.png``: quality, latency and size of every system.

Every row is typed (role, stage, layers, engine), so targets and figures select rows by what they are,
never by their label.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from scalingnote.artifacts import now_iso, read_bundle_manifest
from scalingnote.beir import load_dataset
from scalingnote.evaluation.metrics import evaluate
from scalingnote.training.render import render
from scalingnote.training.rows import Row, fastest, find, label

LATENCY_ROUNDS = 3  # each row's latency: the median of its rounds' p50 (and p99)


def _depth(layers: int | list[int] | None) -> int | None:
    return layers if layers is None or isinstance(layers, int) else len(layers)


def teacher_rows(run, teacher: str, cfg) -> list[Row]:
    """A teacher's torch and ONNX rows, then its students' (torch, then each kept bundle variant)."""
    from scalingnote.runtime.bundle import pick_variant

    lay, index = run.lay, str(run.lay.index_dir(teacher))
    common = {"teacher": teacher, "backbone": cfg.backbone}
    rows = [Row("teacher", teacher, str(lay.root / teacher), index, **common)]
    if lay.teacher_bundle(teacher).is_dir():
        rows.append(Row("teacher", f"{teacher}-bundle", str(lay.teacher_bundle(teacher)), index, "fp32", **common))
    for name, dcfg in run.profile.students(teacher):
        depth, bundle = dcfg.student.depth, lay.bundle_dir(name)
        rows.append(Row("student", name, str(lay.student_dir(name)), index, layers=depth, **common))
        manifest = read_bundle_manifest(bundle)
        served = pick_variant(manifest, "auto") if name == "student" else None
        for variant in manifest.variants:
            row = Row("student", bundle.name, str(bundle), index, variant, depth, served=variant == served, **common)
            rows.append(row)
    return rows


def systems(run) -> list[Row]:
    """Every dense system the run produced, unmeasured, in report order."""
    p, lay = run.profile, run.lay
    rows = [Row("baseline", f"baseline-{Path(e).name}", e, str(lay.baseline_index(e)), "fp32", backbone=e)
            for e in p.baseline_encoders()]  # fmt: skip
    for teacher, cfg in p.teachers():
        rows += teacher_rows(run, teacher, cfg)
    if p.end2end is not None and lay.end2end.is_dir():
        e2e = Row("end2end", "end2end", str(lay.end2end), str(lay.end2end_index), layers=_depth(p.end2end.layers))
        rows.append(e2e)
    if p.finetune is not None and lay.finetune.is_dir():
        rows.append(
            Row("finetune", "finetune", str(lay.finetune), str(lay.teacher_index), layers=p.finetune.student.depth)
        )
    return rows


def measure(run) -> list[Row]:
    """nDCG@10, Recall@100 and MRR@10 on the test split, and batch-1 encode latency, of every system."""
    from scalingnote.evaluation.bm25 import bm25_run
    from scalingnote.evaluation.dense import dense_run
    from scalingnote.training.latency import load_timed, time_queries

    ds = load_dataset(run.dataset, ("test",))
    queries, qrels = ds.split_queries("test"), ds.qrels["test"]
    bm25 = Row("bm25", "bm25", "bm25s (Lucene k1=0.9 b=0.4)", "-", "-")
    bm25.metrics = evaluate(qrels, bm25_run(ds.corpus, queries))
    rows = systems(run)
    ladder = len(run.profile.teachers()) > 1
    for row in rows:
        variant = "fp32" if row.variant == "torch" else row.variant
        row.metrics = evaluate(qrels, dense_run(Path(row.index), row.encoder, queries, variant=variant)[0])
        run.log(f"[report] {label(row, ladder)}: nDCG@10 {row.metrics['ndcg@10']:.4f}")
    threads = run.profile.latency_threads
    timed = [load_timed(row.encoder, "fp32" if row.variant == "torch" else row.variant, threads) for row in rows]
    rounds: list[list[dict[str, float]]] = [[] for _ in rows]
    for r in range(LATENCY_ROUNDS):  # interleaved, every other round in reverse: a noisy moment hits every row
        for i in range(len(rows)) if r % 2 == 0 else reversed(range(len(rows))):
            rounds[i].append(time_queries(timed[i].encode, list(queries.values()), batch_size=1))
    for row, enc, got in zip(rows, timed, rounds, strict=True):
        row.latency = {k: float(np.median([g[k] for g in got])) for k in got[0]} | {"rounds": len(got)}
        row.params, row.engine = enc.params, enc.engine
    rows = [bm25, *rows, *hybrid_rows(rows, queries, qrels, ds.corpus)]
    for row in rows:
        row.system = label(row, ladder)
    return rows


def hybrid_rows(rows: list[Row], queries: dict[str, str], qrels, corpus) -> list[Row]:
    """The served student fused with the served index's BM25 (``/search``'s default mode on that index). Its
    latency is the served student's query encoding, as for every other row."""
    from scalingnote.evaluation.dense import dense_run

    served = next((r for r in rows if r.served), None)
    if served is None:
        return []
    row = Row("hybrid", "hybrid", served.encoder, served.index, served.variant, served.layers, served.teacher)
    row.backbone = served.backbone
    run, _ = dense_run(Path(row.index), row.encoder, queries, 100, row.variant, "hybrid", corpus)
    row.metrics = evaluate(qrels, run)
    row.latency, row.params, row.engine = served.latency, served.params, served.engine
    return [row]


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


Target = tuple[str, bool | None, str]


def teacher_targets(rows: list[Row], teacher: Row, goals) -> list[Target]:
    """One teacher: does training beat its backbone off the shelf; do its students keep its quality, cheaply."""
    out: list[Target] = []
    t, name = teacher.ndcg, teacher.system.split(":")[0]
    for base in (r for r in find(rows, "baseline") if r.encoder == teacher.backbone):
        out.append((f"{name} > {base.system}", t > base.ndcg, f"{t:.4f} vs {base.ndcg:.4f}"))
    t_onnx = fastest(find(rows, "teacher", onnx=True, teacher=teacher.teacher))
    e2e = find(rows, "end2end") if teacher.teacher == "teacher" else []
    sizes = {r.layers for r in find(rows, "student", teacher=teacher.teacher) if r.layers is not None}
    for size in sorted(sizes, reverse=True):
        student = find(rows, "student", onnx=False, layers=size, teacher=teacher.teacher)[0]
        s, goal = student.ndcg, goals.retention.get(size)
        what = f"{student.system.removesuffix(' (torch)')} ≥ {goal:.0%} of its teacher" if goal else ""
        out.append(
            (what or f"{student.system} retention", None if goal is None else s >= goal * t, f"{s:.4f} = {s / t:.1%}")
        )
        if e2e and e2e[0].layers == size:
            e = e2e[0].ndcg
            out.append((f"distilled {size}-layer student > {size}-layer end to end", s > e, f"{s:.4f} vs {e:.4f}"))
        best = fastest(find(rows, "student", onnx=True, layers=size, teacher=teacher.teacher))
        if t_onnx is not None and best is not None:
            ratio = best.latency["p50_ms"] / t_onnx.latency["p50_ms"]
            limit = f"{goals.latency_ratio:.0%}"
            who = student.system.removesuffix(" (torch)").removeprefix("distilled ")
            what = f"{who}: latency ≤ {limit} of its teacher's (ONNX, batch 1, p50; {best.engine})"
            figure = f"{best.latency['p50_ms']:.1f} / {t_onnx.latency['p50_ms']:.1f} ms = {ratio:.0%}"
            out.append((what, ratio <= goals.latency_ratio, figure))
        if size == 0 and best is not None:
            p50, limit = best.latency["p50_ms"], goals.static_p50_ms
            what = f"static student: query encoding ≤ {limit:g} ms p50 (ONNX, batch 1; {best.engine})"
            out.append((what, p50 <= limit, f"{p50:.3f} ms"))
    return out


def served_targets(rows: list[Row]) -> list[Target]:
    """What a user asks first: does the student the service loads beat BM25 and the backbones off the shelf?"""
    served = next((r for r in rows if r.served), None)
    if served is None:
        return []
    out: list[Target] = [
        (
            f"served student ({served.engine}) > {other.system}",
            served.ndcg > other.ndcg,
            f"{served.ndcg:.4f} vs {other.ndcg:.4f}",
        )
        for other in find(rows, "bm25") + find(rows, "baseline")
    ]
    for hybrid in find(rows, "hybrid"):
        for other in [*find(rows, "bm25"), served]:
            what = f"hybrid (served student + BM25) > {other.system}"
            out.append((what, hybrid.ndcg > other.ndcg, f"{hybrid.ndcg:.4f} vs {other.ndcg:.4f}"))
    return out


def ladder_targets(rows: list[Row]) -> list[Target]:
    """With several teachers: the student of the biggest one beats the smallest one's, at the same latency."""
    teachers = sorted(find(rows, "teacher", onnx=False), key=lambda r: r.params or 0)
    if len(teachers) < 2:
        return []
    out: list[Target] = []
    small, big = teachers[0], teachers[-1]
    for size in sorted({r.layers for r in find(rows, "student") if r.layers}, reverse=True):
        a = find(rows, "student", onnx=False, layers=size, teacher=small.teacher)
        b = find(rows, "student", onnx=False, layers=size, teacher=big.teacher)
        la = fastest(find(rows, "student", onnx=True, layers=size, teacher=small.teacher))
        lb = fastest(find(rows, "student", onnx=True, layers=size, teacher=big.teacher))
        if not (a and b and la and lb):
            continue
        ratio = lb.latency["p50_ms"] / la.latency["p50_ms"]
        what = f"{size}-layer student of {big.backbone} > of {small.backbone}, same latency (±10%)"
        figure = f"{b[0].ndcg:.4f} vs {a[0].ndcg:.4f}; latency {ratio:.2f}×"
        out.append((what, b[0].ndcg > a[0].ndcg and abs(ratio - 1) <= 0.10, figure))
    return out


def targets(rows: list[Row], goals) -> list[Target]:
    """Every check of the report, judged against systems measured in the same run on the same data."""
    out: list[Target] = []
    for teacher in find(rows, "teacher", onnx=False):
        out += teacher_targets(rows, teacher, goals)
    if not find(rows, "end2end"):
        out.append(("distilled student > the same student end to end", None, "no end-to-end run in this profile"))
    return out + ladder_targets(rows) + served_targets(rows)


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


def power_law(params: list[float], ndcg: list[float]) -> tuple[float, float]:
    """Least-squares fit of ``1 − nDCG = a · N^(−b)`` over teacher sizes ``N``: returns ``(a, b)``."""
    slope, intercept = np.polyfit(np.log(params), np.log(1 - np.asarray(ndcg)), 1)
    return float(np.exp(intercept)), float(-slope)


def ladder_chart(rows: list[Row], path: Path, title: str) -> dict[str, tuple[float, float]]:
    """nDCG@10 of each teacher and of each student tier against teacher size, student latency marked; with three
    or more teachers, the fitted power laws too (returned per series)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = sorted(find(rows, "teacher", onnx=False), key=lambda r: r.params or 0)
    sizes = [t.params / 1e6 for t in teachers]
    series = {"teacher": [t.ndcg for t in teachers]}
    for n in sorted({r.layers for r in find(rows, "student") if r.layers}, reverse=True):
        series[f"{n}-layer student"] = [
            find(rows, "student", onnx=False, layers=n, teacher=t.teacher)[0].ndcg for t in teachers
        ]
    fits: dict[str, tuple[float, float]] = {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in series.items():
        ax.plot(sizes, values, marker="o", label=name)
        if len(teachers) >= 3:
            a, b = fits[name] = power_law(sizes, values)
            grid = np.geomspace(min(sizes), max(sizes), 50)
            ax.plot(grid, 1 - a * grid ** (-b), linestyle=":", color=ax.lines[-1].get_color())
        if name != "teacher":
            layers = int(name.split("-")[0])
            for t, x, y in zip(teachers, sizes, values, strict=True):
                fast = fastest(find(rows, "student", onnx=True, layers=layers, teacher=t.teacher))
                if fast is not None:
                    ax.annotate(
                        f"{fast.latency['p50_ms']:.1f} ms",
                        (x, y),
                        fontsize=7,
                        xytext=(4, -10),
                        textcoords="offset points",
                    )
    for base in find(rows, "bm25"):
        ax.axhline(base.ndcg, linestyle="--", color="grey", label="BM25")
    ax.set_xscale("log")
    ax.set_xlabel("teacher query-tower params, M (log scale); labels: student latency p50, batch 1")
    ax.set_ylabel("nDCG@10 (test)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fits


def write_report(run, done, t_start: float, load_start: float) -> Path:
    """Measure every system, then write ``report.md``, ``report.json`` and ``report.png``; returns report.md."""
    t0 = time.monotonic()
    rows = measure(run)
    checks = targets(rows, run.profile.targets)
    search = search_latency(run.lay.teacher_index, run.profile.latency_threads)
    done.seconds["report"] = time.monotonic() - t0
    wall = time.monotonic() - t_start
    n_queries = len(load_dataset(run.dataset, ("test",)).qrels["test"])
    load = (load_start, os.getloadavg()[0])
    root = run.lay.root
    chart(rows, root / "report.png", f"ScalingNote `{run.profile.name}` profile, {run.dataset.name} test")
    fits = {}
    if len(run.profile.teachers()) > 1:
        title = f"Teacher ladder, `{run.profile.name}`, {run.dataset.name}"
        fits = ladder_chart(rows, root / "report-ladder.png", title)
    text = render(run, rows, checks, done, wall, load, n_queries, search, fits)
    (root / "report.md").write_text(text, encoding="utf-8")
    payload = {
        "profile": run.profile.model_dump(),
        "dataset": str(run.dataset),
        "rows": [asdict(r) for r in rows],
        "targets": [{"target": t, "met": m, "measured": f} for t, m, f in checks],
        "search_latency": search,
        "power_law_fits": {k: {"a": a, "b": b} for k, (a, b) in fits.items()},
        "stage_seconds": done.seconds,
        "skipped": done.skipped,
        "wall_seconds": wall,
        "finished_at": now_iso(),
    }
    (root / "report.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    run.log(text)
    return root / "report.md"
