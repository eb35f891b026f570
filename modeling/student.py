"""Stage-2 student: the first ``N`` layers of a small encoder plus a linear projection into the teacher's space.

With no layers at all the student is *static*: its token-embedding table, mean-pooled, then the projection. Its
position and token-type embeddings are zeroed and frozen, so a query's vector depends only on its bag of tokens;
the table itself is what training changes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scalingnote.artifacts import EncoderConfig
from scalingnote.errors import UserError
from scalingnote.modeling.pooling import pool
from scalingnote.modeling.tower import Tower


def _layer_list(backbone: nn.Module) -> tuple[nn.Module, str]:
    """Where a BERT-like (``encoder.layer``) or Llama-like (``layers``) backbone keeps its transformer layers."""
    for owner, name in ((getattr(backbone, "encoder", None), "layer"), (backbone, "layers")):
        if isinstance(getattr(owner, name, None), nn.ModuleList):
            return owner, name
    raise UserError(f"don't know where the layers of {type(backbone).__name__} are")


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    owner, name = _layer_list(backbone)
    return getattr(owner, name)


def cut_layers(backbone: nn.Module, keep: int | Sequence[int]) -> None:
    """Keep the first ``keep`` transformer layers, or the layers numbered in ``keep`` (in that order); none: the
    embeddings alone."""
    owner, name = _layer_list(backbone)
    layers = getattr(owner, name)
    chosen = list(range(keep)) if isinstance(keep, int) else list(keep)
    if (isinstance(keep, int) and keep < 0) or not all(0 <= i < len(layers) for i in chosen):
        raise UserError(f"cannot keep layers {keep} of a {len(layers)}-layer backbone")
    setattr(owner, name, nn.ModuleList([layers[i] for i in chosen]))
    backbone.config.num_hidden_layers = len(chosen)
    if isinstance(getattr(backbone.config, "layer_types", None), list):
        backbone.config.layer_types = [backbone.config.layer_types[i] for i in chosen]


def build_student(
    path: Path | str, *, ident: str, layers: int | Sequence[int], dim: int, encoder: EncoderConfig
) -> Tower:
    """A fresh student: backbone cut to ``layers`` layers (a count, or which ones), with a new ``hidden → dim``
    projection."""
    tower = Tower.from_pretrained(path, ident=ident, encoder=encoder, projection_dim=dim)
    cut_layers(tower.backbone, layers)
    return tower


@torch.no_grad()
def make_static(backbone: nn.Module) -> None:
    """Zero and freeze what a token's embedding adds besides the token itself (position, token type), so that
    an embeddings-only backbone is a static token table; the table stays trainable."""
    embeddings = getattr(backbone, "embeddings", None)
    for name in ("position_embeddings", "token_type_embeddings"):
        table = getattr(embeddings, name, None)
        if isinstance(table, nn.Embedding):
            table.weight.zero_()
            table.weight.requires_grad_(False)
    backbone.get_input_embeddings().weight.requires_grad_(True)


@torch.no_grad()
def pooled_features(tower: Tower, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """The student's pooled vectors before projection and normalisation, float32 [N, hidden]."""
    was_training = tower.training
    tower.eval()
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = tower.batch(texts[start : start + batch_size])
        hidden = tower.backbone(**batch).last_hidden_state
        parts.append(pool(hidden, batch["attention_mask"], tower.meta.encoder.pooling).float())
    tower.train(was_training)
    return torch.cat(parts)


@torch.no_grad()
def fit_projection(tower: Tower, features: torch.Tensor, targets: np.ndarray, ridge: float = 1e-2) -> float:
    """Initialise the projection by ridge regression of ``targets`` on ``features``; returns its max |weight|.

    Plain least squares can blow the weights up to ~1e7 on near-collinear pooled features and leave training
    stuck; the ridge term (relative to the mean feature variance) keeps them small.
    """
    assert tower.projection is not None
    x = features.double()
    y = torch.from_numpy(np.asarray(targets)).double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    lam = ridge * gram.diagonal().mean()
    weight = torch.linalg.solve(gram + lam * torch.eye(gram.size(0), dtype=gram.dtype), xc.T @ yc).T
    tower.projection.weight.copy_(weight.float())
    tower.projection.bias.copy_((y_mean - weight @ x_mean).float())
    return float(weight.abs().max())
