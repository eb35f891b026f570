"""Training losses as small modules (sentence-transformers style).

* :class:`InfoNCE`: query → doc contrastive loss over in-batch and hard negatives, with negatives gathered
  from every rank under ``torch.distributed`` and known false negatives masked out.
* :class:`EmbeddingDistill`: query-tower distillation, squared distance + (1 − cosine) to the teacher.
* :class:`ScoreDistill`: ranking distillation, KL from the teacher's to the student's score distribution
  over the teacher's top documents (what retrieval needs, rather than every embedding direction).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks in rank order; gradients flow back to each rank's own rows."""
    _, size = world()
    if size == 1:
        return x
    from torch.distributed._functional_collectives import all_gather_single

    return all_gather_single(x.contiguous(), 0, dist.group.WORLD)  # backward: reduce-scatter (sum)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    _, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def false_negative_mask(doc_keys: torch.Tensor, positive_keys: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` True where doc ``j`` is a known positive of query ``i`` other than its target column.

    ``doc_keys`` [N] identifies each doc column (equal keys = same document); ``positive_keys`` [B, P] lists
    each query's relevant doc keys, right-padded with -1.
    """
    hit = (doc_keys[None, :, None] == positive_keys[:, None, :]) & (positive_keys[:, None, :] >= 0)
    mask = hit.any(-1)
    mask[torch.arange(len(target), device=target.device), target] = False
    return mask


class InfoNCE(nn.Module):
    """Cross-entropy of each query over all docs of the (global) batch at temperature ``temperature``.

    ``docs`` holds every doc column of the local batch (positives, then hard negatives); ``target[i]`` is the
    local column of query ``i``'s positive. When a process group is initialised and ``gather`` is set, the doc
    columns of all ranks are gathered (with gradients) so that every query sees the global batch's negatives.
    """

    def __init__(self, temperature: float = 0.05, gather: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather = gather

    def forward(
        self,
        queries: torch.Tensor,
        docs: torch.Tensor,
        target: torch.Tensor,
        doc_keys: torch.Tensor | None = None,
        positive_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rank, size = world() if self.gather else (0, 1)
        if size > 1:
            target = target + rank * docs.size(0)
            docs = gather_with_grad(docs)
            doc_keys = gather_no_grad(doc_keys) if doc_keys is not None else None
        scores = queries.float() @ docs.float().T / self.temperature
        if doc_keys is not None and positive_keys is not None:
            scores = scores.masked_fill(false_negative_mask(doc_keys, positive_keys, target), float("-inf"))
        return F.cross_entropy(scores, target)


class EmbeddingDistill(nn.Module):
    """``mse_weight · mean ‖s − t‖² + cos_weight · mean (1 − cos(s, t))``: zero iff the embeddings agree."""

    def __init__(self, mse_weight: float = 1.0, cos_weight: float = 1.0) -> None:
        super().__init__()
        self.mse_weight = mse_weight
        self.cos_weight = cos_weight

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        student, teacher = student.float(), teacher.float()
        mse = (student - teacher).pow(2).sum(-1).mean()
        cos = (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
        return self.mse_weight * mse + self.cos_weight * cos


class ScoreDistill(nn.Module):
    """``KL(softmax(t·D/τ) ‖ softmax(s·D/τ))`` over each query's candidate doc vectors ``D`` [B, K, dim]."""

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        docs = docs.float()
        s = torch.einsum("bd,bkd->bk", student.float(), docs) / self.temperature
        t = torch.einsum("bd,bkd->bk", teacher.float(), docs) / self.temperature
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
