"""The training loop the stage drivers share: AdamW + linear warm-up/decay, clipping, curves, checkpoints.

A driver supplies ``step_fn(step)`` (forward and backward of one batch, returning metrics to log) and
optionally ``eval_fn()``; the loop owns optimisation, resumption, progress and logging. Under
``torchrun`` only rank 0 logs and checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from scalingnote.errors import UserError
from scalingnote.modeling.losses import world
from scalingnote.training.checkpoint import load_checkpoint, save_checkpoint
from scalingnote.training.curves import CurveLog, plot_curve


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    lr: float
    warmup: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 0
    checkpoint_every_s: float = 300.0
    checkpoint_every: int = 0
    resume: bool = True


def fingerprint(*parts: object) -> str:
    """A short hash of JSON-serialisable configuration parts (checkpoints and caches are keyed by it)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def epoch_batch(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """Rows of step ``step``'s batch: one seeded permutation of ``n`` rows per epoch, cut into whole batches.

    Step ``s`` gets the same rows on every run, so a resumed run continues exactly where it stopped."""
    epoch, pos = divmod(step, n // batch_size)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[pos * batch_size : (pos + 1) * batch_size]


def bucketed_batch(seed: int, step: int, lengths: np.ndarray, batch_size: int, pool: int) -> np.ndarray:
    """Like :func:`epoch_batch`, but each run of ``pool`` batches of the epoch's permutation is re-cut into
    batches of similar ``lengths`` (served in a seeded order), so a batch pads to little more than its texts.

    Every row still comes once per epoch; step ``s`` still maps to the same rows on every run."""
    n = len(lengths)
    per_epoch = n // batch_size
    epoch, pos = divmod(step, per_epoch)
    chunk, within = divmod(pos, pool)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    rows = perm[chunk * pool * batch_size : min((chunk + 1) * pool, per_epoch) * batch_size]
    rows = rows[np.argsort(lengths[rows], kind="stable")]
    which = np.random.default_rng([seed, epoch, chunk]).permutation(len(rows) // batch_size)[within]
    return rows[which * batch_size : (which + 1) * batch_size]


def setup_distributed() -> tuple[int, int, torch.device]:
    """Join the process group ``torchrun`` describes (NCCL on GPUs, else gloo); ``(rank, world, device)``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, size = world()
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, size, device


def same_start_on_every_rank(start: int, ckpt: Path) -> None:
    """Refuse a resume where the ranks found different checkpoints: a rank that cannot see rank 0's (``--work`` not
    on storage every node shares) would start at another step, with other weights and batches."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    starts: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(starts, start)
    if len(set(starts)) > 1:
        raise UserError(
            f"ranks would resume at different steps {starts} from {ckpt}: "
            "--work must be one directory that every node sees (shared storage)"
        )


def train_loop(
    model: nn.Module,
    step_fn: Callable[[int], dict[str, float]],
    cfg: LoopConfig,
    *,
    work: Path,
    key: str,
    curve: Path,
    desc: str,
    eval_fn: Callable[[], dict[str, float]] | None = None,
    progress: bool = True,
) -> float:
    """Run steps ``[resumed step, cfg.steps)``; returns the wall seconds this call spent training."""
    rank, _ = world()
    main = rank == 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * cfg.steps), cfg.steps)
    ckpt = work / "checkpoint"
    if not cfg.resume and main:
        shutil.rmtree(ckpt, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()  # no rank reads the checkpoint rank 0 is deleting
    start = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, fingerprint=key)
    same_start_on_every_rank(start, ckpt)
    log = CurveLog(curve, resume_step=start) if main else None
    t0 = last_save = time.monotonic()
    model.train()
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, unit="step", disable=not (progress and main))
    for step in range(start, cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        metrics = step_fn(step)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        done = step + 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()})
        if log is not None:
            lr = scheduler.get_last_lr()[0]
            log.log(done, **metrics, grad_norm=float(grad_norm), lr=lr, elapsed_s=time.monotonic() - t0)
            if eval_fn is not None and cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                log.log(done, **eval_fn())
                model.train()
            due = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
            if done < cfg.steps and (due or time.monotonic() - last_save >= cfg.checkpoint_every_s):
                save_checkpoint(ckpt, step=done, model=model, optimizer=optimizer, scheduler=scheduler, fingerprint=key)
                last_save = time.monotonic()
    bar.close()
    if main:
        plot_curve(curve, curve.with_suffix(".png"), desc)
    return time.monotonic() - t0


def publish_trained(tmp: Path, out: Path, work: Path, info: dict) -> Path:
    """Finish a trained artifact staged in ``tmp``: ``train.json`` and curves, atomic publish to ``out``,
    then drop the checkpoint it no longer needs."""
    from scalingnote.artifacts import publish_dir

    (tmp / "train.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    for name in ("curves.jsonl", "curves.png"):
        if (work / name).is_file():
            shutil.copyfile(work / name, tmp / name)
    publish_dir(tmp, out)
    shutil.rmtree(work / "checkpoint", ignore_errors=True)
    return out
