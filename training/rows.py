"""A measured system of the pipeline report: typed fields, so that checks and figures select rows by what
they are (role, teacher, size, backend), never by their label."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Role = Literal["bm25", "baseline", "teacher", "student", "end2end", "finetune", "hybrid"]


@dataclass
class Row:
    """One measured system. ``stage`` names the pipeline artifact; ``variant`` is ``torch`` or a bundle variant;
    ``teacher`` is the teacher stage a teacher or student row belongs to; ``backbone`` what it started from."""

    role: Role
    stage: str
    encoder: str
    index: str
    variant: str = "torch"
    layers: int | None = None
    teacher: str = ""
    backbone: str = ""
    served: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] | None = None
    params: int | None = None
    engine: str = ""
    system: str = ""

    @property
    def onnx(self) -> bool:
        return self.variant != "torch"

    @property
    def ndcg(self) -> float:
        return self.metrics["ndcg@10"]


def label(row: Row, ladder: bool) -> str:
    """The human name of a row, from its typed fields (``ladder``: several teachers, so name each one's backbone)."""
    onnx = f", ONNX {row.variant}" if row.onnx else " (torch)"
    size = "static " if row.layers == 0 else f"{row.layers}-layer " if row.layers else ""
    whose = f"{row.backbone} " if ladder else ""
    if row.role == "bm25":
        return "BM25"
    if row.role == "hybrid":
        return f"hybrid: served student{onnx} + BM25 (RRF)"
    if row.role == "baseline":
        return f"{Path(row.encoder).name} off the shelf"
    if row.role == "teacher":
        return f"{whose}teacher query tower, ONNX fp32" if row.onnx else f"{whose}teacher: stage-1 query tower (torch)"
    if row.role == "student":
        of = f" of the {row.backbone} teacher" if ladder else ""
        return f"distilled {size}student{of}{onnx}"
    if row.role == "end2end":
        return f"end-to-end {size}dual tower{onnx}"
    return f"student fine-tuned on labels, teacher index{onnx}"


def find(
    rows: list[Row], role: Role, onnx: bool | None = None, layers: int | None = None, teacher: str | None = None
) -> list[Row]:
    """The rows of one role (and backend, size and teacher, when given), in report order."""
    return [
        r
        for r in rows
        if r.role == role
        and (onnx is None or r.onnx == onnx)
        and (layers is None or r.layers == layers)
        and (teacher is None or r.teacher == teacher)
    ]


def fastest(rows: list[Row]) -> Row | None:
    timed = [r for r in rows if r.latency]
    return min(timed, key=lambda r: r.latency["p50_ms"]) if timed else None
