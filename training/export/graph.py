"""Trace a tower to a single-file ONNX graph: token ids → normalised embedding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from scalingnote.modeling.tower import Tower
from scalingnote.runtime.bundle import INPUT_NAMES, OUTPUT_NAME


class _Graph(nn.Module):
    """What goes into ONNX: token ids → normalised embedding."""

    def __init__(self, tower: Tower):
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tower(input_ids, attention_mask)


def export_onnx(tower: Tower, path: Path) -> None:
    """Trace the tower to a single-file ONNX graph with dynamic batch and sequence axes."""
    tower = tower.eval().float()
    example = tower.batch(["an example query", "a second, somewhat longer example query for tracing"])
    dynamic = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES} | {OUTPUT_NAME: {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            _Graph(tower),
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )


def weight_matmuls(model: Path) -> list[str]:
    """Names of the MatMul nodes that multiply by a constant weight (what dynamic int8 quantises)."""
    import onnx

    graph = onnx.load(str(model)).graph
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]


def ffn_output_matmuls(names: Sequence[str]) -> list[str]:
    """The FFN down-projections: BERT ``layer.N/output/dense``, Llama ``mlp/down_proj``."""
    return [n for n in names if "/down_proj/" in n or ("/output/dense/" in n and "/attention/" not in n)]


def ffn_matmuls(names: Sequence[str]) -> list[str]:
    """Both FFN MatMuls: BERT ``intermediate/dense`` + ``output/dense``, Llama ``mlp/*``."""
    ffn_in = [n for n in names if "/mlp/" in n or "/intermediate/dense/" in n]
    return list(dict.fromkeys(ffn_in + ffn_output_matmuls(names)))
