"""Trace a tower to a single-file ONNX graph: token ids → normalised embedding.

A static tower (no transformer layer) is folded first: each token's row of the table becomes its embedding after
the backbone's normalisation and the projection, so the graph is a lookup, a masked mean and an L2 norm."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from scalingnote.modeling.pooling import pool
from scalingnote.modeling.tower import Tower
from scalingnote.runtime.bundle import INPUT_NAMES, OUTPUT_NAME


class _Graph(nn.Module):
    """What goes into ONNX: token ids → normalised embedding."""

    def __init__(self, tower: Tower):
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tower(input_ids, attention_mask)


class _StaticGraph(nn.Module):
    """A static tower as one table: mean of the rows of a query's tokens, normalised (bias folded into rows)."""

    def __init__(self, tower: Tower):
        super().__init__()
        self.table = nn.Parameter(static_table(tower), requires_grad=False)
        self.normalize = tower.meta.encoder.normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        vec = pool(nn.functional.embedding(input_ids, self.table), attention_mask, "mean")
        return nn.functional.normalize(vec, dim=-1) if self.normalize else vec


@torch.no_grad()
def static_table(tower: Tower, chunk: int = 256) -> torch.Tensor:
    """Row ``t``: what a static tower makes of token ``t`` before pooling, projected ([vocab, dim], float32).

    Exact because nothing mixes tokens: mean pooling and the projection are linear, and the backbone (no layers;
    position and token-type embeddings zero) maps each token on its own."""
    if not tower.static or tower.meta.encoder.pooling != "mean":
        raise ValueError("only a static, mean-pooled tower folds into a table")
    vocab = tower.backbone.get_input_embeddings().num_embeddings
    chunk = min(chunk, getattr(tower.backbone.config, "max_position_embeddings", chunk))
    ids = torch.arange(-(-vocab // chunk) * chunk).clamp(max=vocab - 1).view(-1, chunk)
    rows = tower.backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.reshape(ids.numel(), -1)
    rows = rows[:vocab]
    return tower.projection(rows) if tower.projection is not None else rows


def export_onnx(tower: Tower, path: Path) -> None:
    """Trace the tower to a single-file ONNX graph with dynamic batch and sequence axes."""
    tower = tower.eval().float()
    graph = _StaticGraph(tower) if tower.static else _Graph(tower)
    example = tower.batch(["an example query", "a second, somewhat longer example query for tracing"])
    dynamic = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES} | {OUTPUT_NAME: {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
