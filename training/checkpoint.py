"""Resumable training state: weights, optimizer, scheduler, step and torch RNG, published atomically.

A checkpoint records the fingerprint of the run's configuration; resuming with a different configuration
is refused rather than silently mixing two runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from scalingnote.artifacts import now_iso, publish_dir, staging_dir
from scalingnote.errors import UserError

STATE_FILE = "state.pt"
META_FILE = "checkpoint.json"


def save_checkpoint(
    path: Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fingerprint: str,
) -> None:
    """Write the state after ``step`` finished steps to ``path`` (replacing any previous checkpoint)."""
    tmp = staging_dir(path)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    torch.save(state, tmp / STATE_FILE)
    meta = {"step": step, "fingerprint": fingerprint, "saved_at": now_iso()}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    publish_dir(tmp, path)


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fingerprint: str,
) -> int:
    """Restore a checkpoint into the given objects; returns the number of finished steps (0 if none)."""
    if not (path / META_FILE).is_file():
        return 0
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    if meta.get("fingerprint") != fingerprint:
        raise UserError(f"checkpoint {path} was made with another configuration: delete it to start over")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(meta["step"])
