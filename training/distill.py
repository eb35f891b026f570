"""Stage 2: distil the teacher's query tower into a small student (query-based knowledge distillation).

Only queries are needed: the teacher's query tower embeds them once (cached), and the student (the first
``layers`` layers of a small encoder plus a projection into the teacher's space) learns to reproduce those
embeddings with MSE + cosine and, optionally, the teacher's score distribution over its top documents.
The doc tower and its index are untouched: the student's ``tower.json`` records the teacher's doc space,
so it can only query the teacher's index.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from scalingnote.artifacts import EncoderConfig, staging_dir, weights_sha256
from scalingnote.beir import load_dataset, load_queries
from scalingnote.choices import Runtime, runtime_key
from scalingnote.errors import UserError
from scalingnote.evaluation.metrics import overlap_at_k
from scalingnote.index.store import LoadedIndex
from scalingnote.modeling.losses import EmbeddingDistill, ScoreDistill
from scalingnote.modeling.onnx_tower import encoder_for
from scalingnote.modeling.student import build_student, fit_projection, make_static, pooled_features
from scalingnote.modeling.tower import Tower, default_encoder_config, freeze_input_embeddings
from scalingnote.paths import data_root
from scalingnote.specs import EncoderRef, query_space, resolve
from scalingnote.training.loop import (
    LoopConfig,
    bucketed_batch,
    epoch_batch,
    fingerprint,
    publish_trained,
    train_loop,
)

TEACHER = "teacher"  # a student backbone name: the first layers of the teacher's own query tower


class StudentConfig(BaseModel):
    """The student's shape: which backbone, which of its layers (a count: the first N; or their numbers,
    e.g. ``[0, 2, 4, 5]``; ``0``: none, a static student), how long its queries may be. ``freeze_embeddings``
    keeps a transformer student's token table fixed; a static student always trains its table."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = "minilm-l6"
    layers: int | list[int] = 3
    max_length: int = 64
    freeze_embeddings: bool = True

    @property
    def depth(self) -> int:
        """How many transformer layers the student has."""
        return self.layers if isinstance(self.layers, int) else len(self.layers)

    @property
    def static(self) -> bool:
        return self.depth == 0


class DistillConfig(BaseModel):
    """Stage-2 hyper-parameters. ``sources``: ``train`` (the dataset's train queries), ``titles`` (corpus
    titles), ``sentences`` (claim-length sentences of the abstracts: in-domain query-like text) or a queries
    file (relative to the data root). The dataset's test queries are always excluded. ``bucket``: batches of
    similar length, re-cut from runs of that many batches (0: plain shuffled batches). ``sentences_per_doc``:
    claim-like sentences taken from each abstract (0: all)."""

    model_config = ConfigDict(extra="forbid")

    student: StudentConfig = StudentConfig()
    sources: list[str] = ["train", "titles", "msmarco-passage-dev-small/queries.tsv"]
    sentences_per_doc: int = 3
    max_queries: int = 0
    heldout: int = 256
    steps: int = 600
    batch_size: int = 64
    bucket: int = 0
    lr: float = 1e-4
    warmup: float = 0.05
    mse_weight: float = 1.0
    cos_weight: float = 1.0
    kl_weight: float = 0.0
    kl_topk: int = 32
    kl_temperature: float = 0.05
    init: Literal["ridge", "random"] = "ridge"
    ridge: float = 1e-2
    eval_every: int = 100
    checkpoint_every_s: float = 300.0
    seed: int = 0


def claim_like(text: str) -> list[str]:
    """Sentences of 6–40 words (SciFact-style claims are single sentences of that length)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if 6 <= len(s.split()) <= 40]


def distillation_queries(cfg: DistillConfig, dataset: Path) -> list[str]:
    """Unique query texts from ``cfg.sources`` in a seeded order, never any test query of ``dataset``."""
    ds = load_dataset(dataset, tuple(s for s in ("train", "test") if (dataset / "qrels" / f"{s}.tsv").is_file()))
    banned = set(ds.split_queries("test").values()) if "test" in ds.qrels else set()
    texts: list[str] = []
    for source in cfg.sources:
        if source == "train":
            texts += ds.split_queries("train").values() if "train" in ds.qrels else []
        elif source == "titles":
            texts += [d.title for d in ds.corpus.values() if d.title.strip()]
        elif source == "sentences":
            per_doc = cfg.sentences_per_doc or None  # 0: every claim-like sentence
            texts += [s for d in ds.corpus.values() for s in claim_like(d.text)[:per_doc]]
        else:
            path = Path(source) if Path(source).is_absolute() else data_root() / source
            texts += load_queries(path).values()
    unique = sorted({t.strip() for t in texts if t.strip()} - banned)
    order = np.random.default_rng(cfg.seed).permutation(len(unique))
    chosen = [unique[i] for i in order]
    return chosen[: cfg.max_queries] if cfg.max_queries else chosen


def new_student(cfg: StudentConfig, *, ident: str, dim: int, teacher_query: Path | None = None) -> Tower:
    """``cfg.backbone`` cut to ``cfg.layers`` layers; ``"teacher"`` cuts the teacher's own query tower."""
    if cfg.backbone == TEACHER:
        if teacher_query is None:
            raise UserError('student backbone "teacher" needs a teacher (distillation only)')
        path = teacher_query
    else:
        path = resolve(cfg.backbone).path
    # a static student has no context to put in a CLS or last token: it mean-pools
    pooling = "mean" if cfg.static else default_encoder_config(path).pooling
    encoder = EncoderConfig(pooling=pooling, max_length=cfg.max_length)
    student = build_student(path, ident=ident, layers=cfg.layers, dim=dim, encoder=encoder)
    if cfg.static:
        make_static(student.backbone)
    elif cfg.freeze_embeddings:  # the token table is most of a small encoder's weights
        freeze_input_embeddings(student.backbone)
    return student


def agreement(student: Tower, texts: list[str], teacher_vecs: np.ndarray, doc_vecs: np.ndarray | None) -> dict:
    """Student vs teacher on held-out queries: mean cosine and, given doc vectors, top-10 overlap."""
    vecs = student.encode(texts, batch_size=128, dtype="fp32")
    out = {"heldout_cos": float((vecs * teacher_vecs).sum(1).mean())}
    if doc_vecs is not None:
        mine, theirs = top_docs(vecs, doc_vecs, 10), top_docs(teacher_vecs, doc_vecs, 10)
        out["heldout_top10_overlap"] = overlap_at_k(mine, theirs)
    return out


def top_docs(queries: np.ndarray, docs: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Rows of each query's ``k`` best-scoring docs (unordered), computed in chunks to bound memory."""
    k = min(k, len(docs) - 1)
    parts = [
        np.argpartition(-(queries[i : i + chunk] @ docs.T), k, axis=1)[:, :k] for i in range(0, len(queries), chunk)
    ]
    return np.concatenate(parts)


def teacher_embeddings(
    ref: EncoderRef, queries: list[str], cache_dir: Path, progress: bool, runtime: Runtime = "torch"
) -> np.ndarray:
    """The teacher query tower's embeddings of ``queries`` (computed by ``runtime``), cached by (teacher weights,
    queries)."""
    teacher_query = ref.tower_path("query")
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / f"teacher-{fingerprint(weights_sha256(teacher_query), queries, *runtime_key(runtime))}.npy"
    if not cache.is_file():
        tower = encoder_for(Tower.from_pretrained(teacher_query, ident=ref.id), runtime)
        vecs = tower.encode(queries, batch_size=64, progress=progress, desc="teacher queries")
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, vecs)
        tmp.replace(cache)
    return np.load(cache)


def distill_step(
    cfg: DistillConfig, student: Tower, train: list[str], targets: torch.Tensor, docs: np.ndarray | None
) -> Callable[[int], dict[str, float]]:
    """Forward and backward of step ``s``: MSE + cos to the teacher, plus the ranking term with ``kl_weight``."""
    embed_loss = EmbeddingDistill(cfg.mse_weight, cfg.cos_weight)
    rank_loss = ScoreDistill(cfg.kl_temperature)
    if cfg.kl_weight > 0:
        if docs is None:
            raise UserError("ranking distillation (kl_weight > 0) needs the teacher's index")
        docs_t = torch.from_numpy(docs)
        topk = torch.from_numpy(top_docs(targets.numpy(), docs, cfg.kl_topk))

    lengths = np.array([len(e.ids) for e in student.tokenize(train)])

    def step_fn(step: int) -> dict[str, float]:
        if cfg.bucket:
            idx = bucketed_batch(cfg.seed, step, lengths, cfg.batch_size, cfg.bucket)
        else:
            idx = epoch_batch(cfg.seed, step, len(train), cfg.batch_size)
        vecs = student(**student.batch([train[i] for i in idx]))
        embed = embed_loss(vecs, targets[idx])
        metrics = {"embed_loss": embed.item()}
        loss = embed
        if cfg.kl_weight > 0:
            rank = rank_loss(vecs, targets[idx], docs_t[topk[idx]])
            loss = loss + cfg.kl_weight * rank
            metrics["rank_loss"] = rank.item()
        loss.backward()
        return {"loss": loss.item(), **metrics}

    return step_fn


def distill(
    cfg: DistillConfig,
    teacher: str | Path,
    dataset: Path,
    out: Path,
    *,
    work: Path,
    index: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    log=print,
    runtime: Runtime = "torch",
) -> Path:
    """Distil ``teacher``'s query tower into a student published at ``out`` (resumes from ``work``).

    The teacher's query embeddings (computed by ``runtime``) are cached in ``cache_dir`` (default ``work``),
    keyed by the teacher's weights and the queries, so students of one teacher share them."""
    torch.manual_seed(cfg.seed)
    ref = resolve(teacher)
    space = query_space(ref)
    queries = distillation_queries(cfg, Path(dataset))
    heldout, train = queries[: cfg.heldout], queries[cfg.heldout :]
    key = fingerprint("distill", cfg.model_dump(), space.model_dump(), queries)
    work.mkdir(parents=True, exist_ok=True)
    targets = teacher_embeddings(ref, queries, cache_dir or work, progress, runtime)
    held_t, train_t = targets[: cfg.heldout], torch.from_numpy(targets[cfg.heldout :])
    log(f"stage 2: {len(train)} distillation queries ({len(heldout)} held out), teacher {ref.id}")
    student = new_student(cfg.student, ident=f"student-{key[:8]}", dim=space.dim, teacher_query=ref.tower_path("query"))
    if cfg.init == "ridge":
        n = min(len(train), 4096)
        peak = fit_projection(student, pooled_features(student, train[:n]), train_t[:n].numpy(), cfg.ridge)
        log(f"projection: ridge init on {n} queries, max |w| {peak:.3f}")
    doc_vecs = LoadedIndex.load(index).vectors() if index is not None else None
    every = cfg.checkpoint_every_s
    loop = LoopConfig(cfg.steps, cfg.lr, cfg.warmup, eval_every=cfg.eval_every, checkpoint_every_s=every)
    seconds = train_loop(
        student,
        distill_step(cfg, student, train, train_t, doc_vecs),
        loop,
        work=work,
        key=key,
        curve=work / "curves.jsonl",
        desc="stage 2 distill",
        eval_fn=lambda: agreement(student, heldout, held_t, doc_vecs),
        progress=progress,
    )
    tmp = staging_dir(out)
    student.save(tmp, role="query", space=space, teacher=ref.id, backbone=cfg.student.backbone)
    final = agreement(student, heldout, held_t, doc_vecs)
    info = {"config": cfg.model_dump(), "queries": len(train), "train_seconds": seconds, "heldout": final}
    return publish_trained(tmp, out, work, info)
