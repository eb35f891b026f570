"""Stage 1: train the teacher's query and doc towers with InfoNCE (in-batch + BM25 hard negatives).

Run under ``torchrun --nproc-per-node N`` to train data-parallel: every rank's doc columns are gathered so
each query is contrasted against the global batch (cross-rank negatives).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict

from scalingnote.artifacts import EncoderConfig, Pooling, staging_dir
from scalingnote.beir import BeirDataset, load_dataset
from scalingnote.choices import Runtime
from scalingnote.errors import UserError
from scalingnote.index.store import LoadedIndex
from scalingnote.modeling.dual import DualTower
from scalingnote.modeling.losses import InfoNCE, world
from scalingnote.modeling.tower import default_encoder_config
from scalingnote.specs import resolve
from scalingnote.training.data import (
    Batches,
    CorpusPairs,
    Example,
    mine_negatives,
    pseudo_query_examples,
    qrels_examples,
    title_examples,
)
from scalingnote.training.loop import (
    LoopConfig,
    bucketed_batch,
    epoch_batch,
    fingerprint,
    publish_trained,
    setup_distributed,
    train_loop,
)


class TowerConfig(BaseModel):
    """Stage-1 hyper-parameters (the built-in profiles hold the tuned sets).

    ``doc_tower = "frozen"`` trains the query tower alone against the backbone's own doc vectors of the whole
    corpus (full-corpus softmax): for backbones whose doc-tower step is too dear for the hardware. The doc
    tower then stays the backbone, byte for byte, and so does its index (shared through the index cache).
    ``bucket``: batches of similar query length (runs of that many batches re-cut; frozen doc tower only)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = "minilm-l6"
    layers: int | list[int] | None = None
    shared: bool = False
    pooling: Pooling | None = None
    query_max_length: int = 64
    doc_max_length: int = 256
    query_prefix: str = ""
    doc_prefix: str = ""
    split: str = "train"
    title_pairs: bool = True
    negatives: int = 1
    mine_depth: int = 30
    mine_skip: int = 3
    steps: int = 60
    batch_size: int = 32
    lr: float = 2e-5
    warmup: float = 0.1
    temperature: float = 0.05
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    doc_tower: Literal["train", "frozen"] = "train"
    bucket: int = 0
    lora_rank: int = 0
    lora_alpha: int = 16
    gradient_checkpointing: bool = False
    accumulation: int = 1
    checkpoint_every: int = 0
    checkpoint_every_s: float = 300.0
    seed: int = 0


def training_examples(cfg: TowerConfig, ds: BeirDataset, pseudo: dict[str, list[str]] | None = None) -> list[Example]:
    """Judged pairs of ``cfg.split`` + title pairs + doc2query pairs, with hard negatives when asked."""
    examples = qrels_examples(ds, cfg.split)
    if cfg.title_pairs:
        examples += title_examples(ds.corpus)
    if pseudo:
        examples += pseudo_query_examples(pseudo, ds.corpus)
    if cfg.negatives:
        examples = mine_negatives(examples, ds.corpus, cfg.mine_depth, cfg.mine_skip)
    return examples


def build_dual(cfg: TowerConfig, ident: str) -> DualTower:
    """Query and doc towers from ``cfg.backbone`` with the configured pooling, lengths, freezing and LoRA."""
    ref = resolve(cfg.backbone)
    if ref.kind != "hf":
        raise UserError(f"stage 1 starts from a pretrained backbone, not a {ref.kind} directory: {cfg.backbone}")
    pooling = cfg.pooling or default_encoder_config(ref.path).pooling
    dual = DualTower.from_backbone(
        ref.path,
        ident=ident,
        backbone=cfg.backbone,
        query_encoder=EncoderConfig(pooling=pooling, max_length=cfg.query_max_length, prefix=cfg.query_prefix),
        doc_encoder=EncoderConfig(pooling=pooling, max_length=cfg.doc_max_length, prefix=cfg.doc_prefix),
        shared=cfg.shared,
        layers=cfg.layers,
    )
    if cfg.freeze_embeddings:
        dual.freeze_input_embeddings()
    if cfg.freeze_layers:
        dual.freeze_bottom(cfg.freeze_layers)
    if cfg.gradient_checkpointing:
        dual.enable_gradient_checkpointing()
    if cfg.lora_rank:
        dual.add_lora(cfg.lora_rank, cfg.lora_alpha)
    return dual


def towers_step(
    cfg: TowerConfig, dual: DualTower, model: torch.nn.Module, batches: Batches, device: torch.device
) -> Callable[[int], dict[str, float]]:
    """One optimiser step; with accumulation, ``accumulation`` micro-batches (each with its own negatives)."""
    rank, size = world()
    loss_fn = InfoNCE(cfg.temperature)
    bf16 = dual.query.resolve_dtype(cfg.dtype) == torch.bfloat16

    def step_fn(step: int) -> dict[str, float]:
        total = 0.0
        for micro in range(cfg.accumulation):
            b = batches.get(step, rank * cfg.accumulation + micro, size * cfg.accumulation)
            q_in = {k: v.to(device) for k, v in dual.query.batch(b.queries).items()}
            d_in = {k: v.to(device) for k, v in dual.doc.batch(b.docs).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                q, d = model(q_in, d_in)
            loss = loss_fn(q, d, b.target.to(device), b.doc_keys.to(device), b.positive_keys.to(device))
            (loss / cfg.accumulation).backward()
            total += loss.item() / cfg.accumulation
        return {"loss": total}

    return step_fn


def train_query_side(
    cfg: TowerConfig,
    dataset: Path,
    out: Path,
    *,
    work: Path,
    pseudo=None,
    progress: bool = True,
    resume=True,
    log=print,
    runtime: Runtime = "torch",
) -> Path:
    """Stage 1 with a frozen doc tower (``cfg.doc_tower == "frozen"``): InfoNCE of the query tower over every
    doc vector of the backbone's own index (built once with ``runtime``, or found in the index cache)."""
    from scalingnote.index.build import cached_index

    if cfg.doc_prefix or cfg.layers is not None or cfg.shared or cfg.pooling is not None:
        raise UserError("a frozen doc tower is the backbone itself: no doc_prefix, pooling, layers or shared tower")
    torch.manual_seed(cfg.seed)
    ds = load_dataset(dataset, (cfg.split,))
    examples = training_examples(cfg.model_copy(update={"negatives": 0}), ds, pseudo)
    cached_index(dataset, cfg.backbone, work / "doc-index", cfg.doc_max_length, runtime=runtime)
    doc_index = LoadedIndex.load(work / "doc-index")
    pairs = CorpusPairs.build(examples, doc_index.ids)
    docs = torch.from_numpy(doc_index.vectors())
    key = fingerprint("towers-query-side", cfg.model_dump(), str(Path(dataset).resolve()), len(pairs))
    dual = build_dual(cfg, ident=f"{Path(cfg.backbone).name}-dual-{key[:8]}")
    dual.doc.requires_grad_(False)
    lengths = np.array([len(e.ids) for e in dual.query.tokenize(pairs.queries)])
    loss_fn = InfoNCE(cfg.temperature, gather=False)
    log(
        f"stage 1 (query side, frozen doc tower): {len(pairs)} pairs against {len(docs)} doc vectors, {cfg.steps} steps"
    )

    def step_fn(step: int) -> dict[str, float]:
        if cfg.bucket:
            rows = bucketed_batch(cfg.seed, step, lengths, cfg.batch_size, cfg.bucket)
        else:
            rows = epoch_batch(cfg.seed, step, len(pairs), cfg.batch_size)
        loss = pairs.loss(dual.query, docs, rows, loss_fn)
        loss.backward()
        return {"loss": loss.item()}

    loop = LoopConfig(cfg.steps, cfg.lr, cfg.warmup, checkpoint_every_s=cfg.checkpoint_every_s, resume=resume)
    seconds = train_loop(
        dual,
        step_fn,
        loop,
        work=work,
        key=key,
        curve=work / "curves.jsonl",
        desc="stage 1 query tower",
        progress=progress,
    )
    tmp = staging_dir(out)
    space = dual.save(tmp, frozen_doc=resolve(cfg.backbone).path)
    info = {"config": cfg.model_dump(), "examples": len(pairs), "world_size": 1, "train_seconds": seconds}
    return publish_trained(tmp, out, work, info | {"space": space.model_dump()})


def train_towers(
    cfg: TowerConfig,
    dataset: Path,
    out: Path,
    *,
    work: Path,
    pseudo: dict[str, list[str]] | None = None,
    progress: bool = True,
    resume: bool = True,
    log=print,
    runtime: Runtime = "torch",
) -> Path:
    """Train a dual tower from ``cfg.backbone`` and publish it at ``out`` (resumes from ``work`` unless told not);
    ``runtime``: what builds a frozen doc tower's index."""
    if cfg.doc_tower == "frozen":
        kwargs = {"pseudo": pseudo, "progress": progress, "resume": resume, "log": log, "runtime": runtime}
        return train_query_side(cfg, dataset, out, work=work, **kwargs)
    rank, size, device = setup_distributed()
    torch.manual_seed(cfg.seed)
    if cfg.batch_size % (size * cfg.accumulation):
        raise UserError(f"batch {cfg.batch_size} is not divisible by {size} rank(s) × {cfg.accumulation} micro-steps")
    ds = load_dataset(dataset, (cfg.split,))
    examples = training_examples(cfg, ds, pseudo)
    key = fingerprint("towers", cfg.model_dump(), str(Path(dataset).resolve()), len(examples), size)
    dual = build_dual(cfg, ident=f"{Path(cfg.backbone).name}-dual-{key[:8]}").to(device)
    model = torch.nn.parallel.DistributedDataParallel(dual) if size > 1 else dual
    batches = Batches(examples, ds.corpus, cfg.batch_size, cfg.negatives, cfg.seed)
    if rank == 0:
        bf16 = dual.query.resolve_dtype(cfg.dtype) == torch.bfloat16
        log(f"stage 1: {len(examples)} examples, {cfg.steps} steps of {cfg.batch_size} on {size} rank(s), bf16={bf16}")
    loop = LoopConfig(
        cfg.steps,
        cfg.lr,
        cfg.warmup,
        checkpoint_every_s=cfg.checkpoint_every_s,
        checkpoint_every=cfg.checkpoint_every,
        resume=resume,
    )
    step_fn = towers_step(cfg, dual, model, batches, device)
    seconds = train_loop(
        dual, step_fn, loop, work=work, key=key, curve=work / "curves.jsonl", desc="stage 1 towers", progress=progress
    )
    if rank == 0:
        tmp = staging_dir(out)
        space = dual.save(tmp)
        info = {"config": cfg.model_dump(), "examples": len(examples), "world_size": size, "train_seconds": seconds}
        publish_trained(tmp, out, work, info | {"space": space.model_dump()})
    if size > 1:
        dist.barrier()
    return out
