"""Extra baseline: train the small student on relevance labels against the teacher's frozen doc index.

Not part of the paper's comparison (that is ``end2end``: the student as an ordinary dual tower). Instead of
imitating the teacher's query tower, the student is trained with InfoNCE over the *whole* corpus of teacher
doc vectors (read back from the flat index, so no doc tower runs): judged train pairs plus title → document
pairs, other known positives masked. It queries the teacher's index, like the distilled student.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from scalingnote.artifacts import staging_dir
from scalingnote.beir import load_dataset
from scalingnote.errors import UserError
from scalingnote.index.store import LoadedIndex
from scalingnote.modeling.losses import InfoNCE
from scalingnote.modeling.student import fit_projection, pooled_features
from scalingnote.training.data import CorpusPairs, qrels_examples, title_examples
from scalingnote.training.distill import StudentConfig, new_student
from scalingnote.training.loop import LoopConfig, epoch_batch, fingerprint, publish_trained, train_loop


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student: StudentConfig = StudentConfig()
    split: str = "train"
    title_pairs: bool = True
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-4
    warmup: float = 0.05
    temperature: float = 0.05
    ridge: float = 1e-2
    checkpoint_every_s: float = 300.0
    seed: int = 0


def train_query_finetune(
    cfg: FinetuneConfig, index: Path, dataset: Path, out: Path, *, work: Path, progress: bool = True, log=print
) -> Path:
    """Train a student against ``index``'s frozen doc vectors and publish it at ``out``."""
    torch.manual_seed(cfg.seed)
    loaded = LoadedIndex.load(index)
    manifest, ids = loaded.manifest, loaded.ids
    ds = load_dataset(dataset, (cfg.split,))
    doc_vecs = torch.from_numpy(loaded.vectors())
    examples = qrels_examples(ds, cfg.split) + (title_examples(ds.corpus) if cfg.title_pairs else [])
    pairs = CorpusPairs.build(examples, ids)
    if len(pairs) < cfg.batch_size:
        raise UserError(f"only {len(pairs)} training pairs match documents of {index}")
    key = fingerprint("query-finetune", cfg.model_dump(), manifest.space.model_dump(), manifest.version, len(pairs))
    student = new_student(cfg.student, ident=f"finetune-{key[:8]}", dim=manifest.space.dim)
    n = min(len(pairs), 4096)
    features = pooled_features(student, pairs.queries[:n])
    peak = fit_projection(student, features, doc_vecs[pairs.target[:n]].numpy(), cfg.ridge)
    log(f"query fine-tune baseline: {len(pairs)} pairs against {len(ids)} frozen doc vectors (init max |w| {peak:.3f})")
    loss_fn = InfoNCE(cfg.temperature, gather=False)

    def step_fn(step: int) -> dict[str, float]:
        loss = pairs.loss(student, doc_vecs, epoch_batch(cfg.seed, step, len(pairs), cfg.batch_size), loss_fn)
        loss.backward()
        return {"loss": loss.item()}

    loop = LoopConfig(cfg.steps, cfg.lr, cfg.warmup, checkpoint_every_s=cfg.checkpoint_every_s)
    curve = work / "curves.jsonl"
    seconds = train_loop(
        student, step_fn, loop, work=work, key=key, curve=curve, desc="query fine-tune", progress=progress
    )
    tmp = staging_dir(out)
    student.save(tmp, role="query", space=manifest.space, teacher=manifest.space.id)
    info = {"config": cfg.model_dump(), "pairs": len(pairs), "train_seconds": seconds}
    return publish_trained(tmp, out, work, info)
