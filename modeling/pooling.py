"""Pooling of token states into one vector (traceable: used inside the ONNX graph too)."""

import torch

from scalingnote.artifacts import Pooling


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """Pool ``hidden`` [B, T, H] under attention ``mask`` [B, T] (right-padded)."""
    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if how == "cls":
        return hidden[:, 0]
    if how == "last-token":
        last = mask.long().sum(1) - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}")
