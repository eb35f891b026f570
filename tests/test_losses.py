"""Losses: InfoNCE by hand, false-negative masking, distillation loss, cross-rank negatives over gloo."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scalingnote.modeling.losses import EmbeddingDistill, InfoNCE, ScoreDistill, false_negative_mask


def test_infonce_matches_hand_computation() -> None:
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for tau in (1.0, 0.5, 0.05):
        loss = InfoNCE(tau)(q, d, torch.tensor([0]))
        # scores are 1/tau and 0: -log(e^{1/tau} / (e^{1/tau} + 1)) = log(1 + e^{-1/tau})
        assert loss.item() == pytest.approx(math.log1p(math.exp(-1 / tau)), rel=1e-5, abs=1e-7)
    # the positive in the other column: log(1 + e^{+1/tau})
    assert InfoNCE(1.0)(q, d, torch.tensor([1])).item() == pytest.approx(math.log1p(math.e), rel=1e-5)


def test_infonce_two_queries_average() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    loss = InfoNCE(1.0)(q, d, torch.tensor([0, 1]))
    first = -math.log(math.e / (math.e + 1 + math.exp(0.6)))
    second = -math.log(math.e / (1 + math.e + math.exp(0.8)))
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-5)


def test_false_negative_mask_hides_known_positives_but_never_the_target() -> None:
    doc_keys = torch.tensor([10, 11, 10, 12])  # column 2 is the same document as column 0
    positive_keys = torch.tensor([[10, -1], [11, 12]])  # query 1 also has doc 12 judged relevant
    mask = false_negative_mask(doc_keys, positive_keys, torch.tensor([0, 1]))
    assert mask.tolist() == [[False, False, True, False], [False, False, False, True]]


def test_masked_infonce_equals_loss_without_the_masked_columns() -> None:
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    d = torch.stack([q[0], q[1], q[0], q[1]])  # column 2 duplicates query 0's positive; 3 is query 1's other hit
    doc_keys = torch.tensor([10, 11, 10, 12])
    positive_keys = torch.tensor([[10, -1], [11, 12]])
    target = torch.tensor([0, 1])
    masked = InfoNCE(0.1)(q, d, target, doc_keys, positive_keys)
    by_hand = (
        InfoNCE(0.1)(q[:1], d[[0, 1, 3]], torch.tensor([0])) + InfoNCE(0.1)(q[1:], d[[0, 1, 2]], torch.tensor([1]))
    ) / 2
    assert masked.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert masked.item() != pytest.approx(InfoNCE(0.1)(q, d, target).item(), rel=1e-3)


def test_distill_loss_is_zero_when_equal_and_grows_with_distance() -> None:
    torch.manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    loss = EmbeddingDistill()
    assert loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    near = torch.nn.functional.normalize(t + 0.05 * torch.randn_like(t), dim=-1)
    far = torch.nn.functional.normalize(t + 0.5 * torch.randn_like(t), dim=-1)
    assert 0 < loss(near, t).item() < loss(far, t).item()
    # each term alone: squared distance 2 - 2cos for unit vectors, and 1 - cos
    cos = torch.nn.functional.cosine_similarity(far, t).mean().item()
    assert EmbeddingDistill(0.0, 1.0)(far, t).item() == pytest.approx(1 - cos, rel=1e-5)
    assert EmbeddingDistill(1.0, 0.0)(far, t).item() == pytest.approx(2 - 2 * cos, rel=1e-4)


# --- cross-rank negatives: two real gloo processes on 127.0.0.1 -------------------------------------------------

WORLD, LOCAL_Q, NEG = 2, 3, 2


def _global_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, per-rank doc blocks (positives then negatives), doc keys and positive keys for both ranks."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(WORLD * LOCAL_Q, 8, generator=g)
    d = torch.randn(WORLD, LOCAL_Q * (1 + NEG), 8, generator=g)
    keys = torch.arange(WORLD * LOCAL_Q * (1 + NEG)).view(WORLD, -1).clone()
    keys[1, 0] = keys[0, 4]  # rank 1's first positive is a negative on rank 0: a cross-rank false negative
    positive_keys = torch.stack([keys[r, i] for r in range(WORLD) for i in range(LOCAL_Q)]).view(-1, 1)
    return q, d, keys, positive_keys


def _rank_main(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        q_all, d_all, keys, pos = _global_inputs()
        q = q_all[rank * LOCAL_Q : (rank + 1) * LOCAL_Q].clone().requires_grad_()
        d = d_all[rank].clone().requires_grad_()
        local_pos = pos[rank * LOCAL_Q : (rank + 1) * LOCAL_Q]
        loss = InfoNCE(0.1)(q, d, torch.arange(LOCAL_Q), keys[rank], local_pos)
        loss.backward()
        torch.save({"loss": loss.detach(), "q_grad": q.grad, "d_grad": d.grad}, f"{out}/rank{rank}.pt")
        # both ranks leave together: a rank that tears gloo down while its peer still talks aborts that peer
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cross_rank_negatives_match_single_process_loss(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    q_all, d_all, keys, pos = _global_inputs()
    q = q_all.clone().requires_grad_()
    d = d_all.reshape(-1, 8).clone().requires_grad_()
    per_rank = d_all.size(1)
    target = torch.tensor([r * per_rank + i for r in range(WORLD) for i in range(LOCAL_Q)])
    full = InfoNCE(0.1, gather=False)(q, d, target, keys.reshape(-1), pos)
    full.backward()

    # the global loss is the mean of the ranks' losses; each rank sees every rank's docs as negatives
    assert torch.stack([r["loss"] for r in ranks]).mean().item() == pytest.approx(full.item(), rel=1e-5)
    no_gather = InfoNCE(0.1, gather=False)(q_all[:LOCAL_Q], d_all[0], torch.arange(LOCAL_Q), keys[0], pos[:LOCAL_Q])
    assert ranks[0]["loss"].item() != pytest.approx(no_gather.item(), rel=1e-3)
    # gradients reach each rank's own rows, summed over all ranks' losses (= world × the global mean's gradient)
    for r, got in enumerate(ranks):
        q_rows, d_rows = slice(r * LOCAL_Q, (r + 1) * LOCAL_Q), slice(r * per_rank, (r + 1) * per_rank)
        torch.testing.assert_close(got["q_grad"], WORLD * q.grad[q_rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["d_grad"], WORLD * d.grad[d_rows], rtol=1e-4, atol=1e-6)


def test_score_distill_is_zero_when_rankings_agree_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    docs = torch.nn.functional.normalize(torch.randn(4, 6, 8), dim=-1)
    loss = ScoreDistill(0.1)
    assert loss(teacher.clone(), teacher, docs).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert loss(other, teacher, docs).item() > 0.01
