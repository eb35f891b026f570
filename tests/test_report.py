"""The report judges a run against what was measured beside it: typed rows in, checks and figures out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scalingnote.training.profiles import Targets
from scalingnote.training.render import ladder_table, verdict
from scalingnote.training.report import ladder_chart, power_law, targets
from scalingnote.training.rows import Row, label


def row(role, stage, ndcg, *, variant="torch", layers=None, teacher="", backbone="", params=None, p50=None, **kw):
    r = Row(role, stage, f"/x/{stage}", "/x/index", variant, layers, teacher, backbone, **kw)
    r.metrics = {"ndcg@10": ndcg, "recall@100": 0.9, "mrr@10": 0.5}
    r.params = params
    r.engine = "torch-float32" if variant == "torch" else f"onnx-{variant}"
    r.latency = {"p50_ms": p50, "p99_ms": p50 * 2} if p50 else None
    r.system = label(r, ladder=bool(teacher and teacher != "teacher"))
    return r


def ladder_rows(sizes: dict[str, tuple[float, float]]) -> list[Row]:
    """BM25, a baseline, and per teacher (name → (params, nDCG)): teacher torch/ONNX rows, 4- and 2-layer students."""
    base = row("baseline", "baseline-minilm-l6", 0.645, backbone="minilm-l6", p50=12)
    base.encoder = "minilm-l6"
    base.system = label(base, ladder=False)
    rows = [row("bm25", "bm25", 0.676), base]
    for name, (params, t) in sizes.items():
        stage = "teacher" if name == "minilm-l6" else f"teacher-{name}"
        kw = {"teacher": stage, "backbone": name}
        rows += [row("teacher", stage, t, params=params, p50=params / 2e6, **kw)]
        rows += [row("teacher", f"{stage}-bundle", t, variant="fp32", params=params, p50=params / 4e6, **kw)]
        suffix = stage.removeprefix("teacher")
        for layers, kept in ((4, 0.97), (2, 0.95)):
            name_ = f"student{suffix}" + ("" if layers == 4 else "-l2")
            rows += [row("student", name_, t * kept, layers=layers, **kw)]
            rows += [row("student", name_.replace("student", "bundle"), t * kept, variant="int8", layers=layers,
                         p50=layers * 0.5, served=name_ == "student", **kw)]  # fmt: skip
    return rows


def test_checks_are_relative_to_baselines_and_teachers_of_the_same_run() -> None:
    rows = ladder_rows({"minilm-l6": (22.6e6, 0.687), "mpnet-base": (109.5e6, 0.71)})
    checks = {what: (met, figure) for what, met, figure in targets(rows, Targets())}
    assert checks["teacher > minilm-l6 off the shelf"][0] is True
    assert "mpnet-base teacher > minilm-l6 off the shelf" not in checks, "a teacher meets its own backbone only"
    assert checks[
        "4-layer student of the mpnet-base teacher: latency ≤ 40% of its teacher's (ONNX, batch 1, p50; onnx-int8)"
    ][0]
    assert checks["distilled 4-layer student ≥ 97% of its teacher"][0] is True
    assert checks["distilled 4-layer student of the mpnet-base teacher ≥ 97% of its teacher"][0] is True
    assert checks["distilled 2-layer student ≥ 95% of its teacher"][0] is True
    assert checks["4-layer student of mpnet-base > of minilm-l6, same latency (±10%)"][0] is True
    served = [what for what in checks if what.startswith("served student")]
    assert served == ["served student (onnx-int8) > BM25", "served student (onnx-int8) > minilm-l6 off the shelf"]
    assert checks["served student (onnx-int8) > BM25"] == (False, "0.6664 vs 0.6760")
    assert not any("≥ 0.68" in what for what in checks), "no absolute SciFact target"
    text = " ".join(verdict(rows))
    assert "beats minilm-l6 off the shelf (0.6450)" in text and "**falls below BM25 (0.6760)**" in text


def test_a_student_below_its_teachers_goal_is_reported_as_missed() -> None:
    rows = ladder_rows({"minilm-l6": (22.6e6, 0.687)})
    for r in rows:
        if r.role == "student" and r.layers == 4:
            r.metrics["ndcg@10"] = 0.60
    checks = {what: met for what, met, _ in targets(rows, Targets(retention={4: 0.97}))}
    assert checks["distilled 4-layer student ≥ 97% of its teacher"] is False
    assert checks["distilled 2-layer student (torch) retention"] is None, "no goal for 2 layers here: n/a"
    assert not ladder_table(rows, {}), "one teacher: no ladder"


def test_power_law_recovers_its_exponent_and_the_ladder_figure_is_drawn(tmp_path: Path) -> None:
    n = np.array([20.0, 100.0, 300.0])
    a, b = power_law(list(n), list(1 - 0.5 * n**-0.2))
    assert a == pytest.approx(0.5, rel=1e-6) and b == pytest.approx(0.2, rel=1e-6)
    sizes = {"minilm-l6": (22.6e6, 0.66), "smollm2-135m": (134.5e6, 0.70), "gemma3-270m": (268e6, 0.72)}
    rows = ladder_rows(sizes)
    fits = ladder_chart(rows, tmp_path / "ladder.png", "t")
    assert set(fits) == {"teacher", "4-layer student", "2-layer student"} and fits["teacher"][1] > 0
    assert (tmp_path / "ladder.png").stat().st_size > 10_000
    table = "\n".join(ladder_table(rows, fits))
    assert "| gemma3-270m | 268.0 M | 0.7200 |" in table and "Power-law fits" in table


def test_hybrid_is_judged_against_bm25_and_the_served_student() -> None:
    rows = ladder_rows({"minilm-l6": (22.6e6, 0.687)})
    served = next(r for r in rows if r.served)
    rows.append(row("hybrid", "hybrid", 0.70, variant="int8", layers=4, teacher="teacher", p50=2))
    checks = {what: (met, figure) for what, met, figure in targets(rows, Targets())}
    assert checks["hybrid (served student + BM25) > BM25"] == (True, "0.7000 vs 0.6760")
    assert checks[f"hybrid (served student + BM25) > {served.system}"][0] is True
    assert "beats the best of them, BM25 (0.6760)" in verdict(rows)[0]
    rows[-1].metrics["ndcg@10"] = 0.66
    checks = {what: met for what, met, _ in targets(rows, Targets())}
    assert checks["hybrid (served student + BM25) > BM25"] is False
    assert "does not beat" in verdict(rows)[0]
