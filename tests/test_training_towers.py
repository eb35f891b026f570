"""Stage 1: separate towers diverge, data/batches, the dual artifact, resume, and a 2-rank gloo run."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from scalingnote.artifacts import read_index_manifest
from scalingnote.beir import load_dataset
from scalingnote.errors import UserError
from scalingnote.modeling.dual import DualTower
from scalingnote.modeling.losses import InfoNCE
from scalingnote.modeling.tower import Tower
from scalingnote.specs import doc_space, query_space, resolve
from scalingnote.training.data import Batches, doc_key, mine_negatives, qrels_examples, title_examples
from scalingnote.training.loop import LoopConfig, train_loop
from scalingnote.training.towers import train_towers
from tests.conftest import tiny_tower_config


def _step(dual: DualTower) -> None:
    q = dual.query(**dual.query.batch(["cell energy", "virus lungs"]))
    d = dual.doc(**dual.doc.batch(["mitochondria produce energy", "influenza infects the lungs"]))
    InfoNCE(0.05)(q, d, torch.arange(2)).backward()


def test_separate_towers_start_equal_and_diverge_after_a_step(tiny_model: Path) -> None:
    dual = DualTower.from_backbone(tiny_model, ident="t", backbone="tiny")
    q_params, d_params = dict(dual.query.backbone.named_parameters()), dict(dual.doc.backbone.named_parameters())
    assert all(torch.equal(q_params[n], d_params[n]) for n in q_params)
    assert all(q_params[n].data_ptr() != d_params[n].data_ptr() for n in q_params)
    opt = torch.optim.SGD(dual.parameters(), lr=0.5)
    _step(dual)
    opt.step()
    changed = [n for n in q_params if not torch.equal(q_params[n], d_params[n])]
    assert len(changed) > len(q_params) // 2


def test_shared_tower_stays_one_set_of_weights(tiny_model: Path) -> None:
    dual = DualTower.from_backbone(tiny_model, ident="t", backbone="tiny", shared=True)
    assert dual.doc.backbone is dual.query.backbone
    opt = torch.optim.SGD(dual.parameters(), lr=0.5)
    _step(dual)
    opt.step()
    q, d = dual.query.backbone.state_dict(), dual.doc.backbone.state_dict()
    assert all(torch.equal(q[n], d[n]) for n in q)


def test_examples_negatives_and_batches(tiny_beir: Path) -> None:
    ds = load_dataset(tiny_beir, ("train",))
    examples = mine_negatives(qrels_examples(ds, "train") + title_examples(ds.corpus), ds.corpus, depth=10, skip=1)
    assert all(e.positive not in e.negatives and not (set(e.negatives) & e.relevant) for e in examples)
    batches = Batches(examples, ds.corpus, batch_size=4, negatives=2, seed=3)
    b = batches.get(5)
    assert len(b.queries) == 4 and len(b.docs) == 4 + 8 and b.doc_keys.shape == (12,)
    assert batches.get(5).docs == b.docs, "a step must map to the same batch on every call (resume)"
    assert batches.get(6).queries != b.queries
    halves = [batches.get(5, rank, 2) for rank in (0, 1)]
    assert halves[0].queries + halves[1].queries == b.queries
    assert doc_key("cell-1") == doc_key("cell-1") != doc_key("cell-2")


def test_train_towers_publishes_a_dual_whose_query_side_targets_its_doc_tower(
    tiny_teacher: Path, tiny_teacher_index: Path
) -> None:
    ref = resolve(tiny_teacher)
    assert ref.kind == "dual"
    space = doc_space(ref)
    assert query_space(ref) == space
    query_meta = json.loads((tiny_teacher / "query" / "tower.json").read_text())
    assert query_meta["role"] == "query" and query_meta["space"] == space.model_dump()
    assert read_index_manifest(tiny_teacher_index).space == space
    curve = [json.loads(line) for line in (tiny_teacher / "curves.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [1, 2] and all(r["loss"] > 0 for r in curve)
    assert (tiny_teacher / "curves.png").stat().st_size > 0


class _Crash(Exception):
    pass


def _regression_run(work: Path, steps: int, crash_at: int | None = None) -> tuple[torch.nn.Module, list[int]]:
    """A small model trained with the real loop; ``crash_at`` raises inside that step (after checkpoints)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
    seen: list[int] = []

    def step_fn(step: int) -> dict[str, float]:
        if step == crash_at:
            raise _Crash
        seen.append(step)
        idx = torch.arange(step * 8, step * 8 + 8) % 64
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        return {"loss": loss.item()}

    cfg = LoopConfig(steps=steps, lr=1e-2, checkpoint_every_s=0.0)
    train_loop(model, step_fn, cfg, work=work, key="k1", curve=work / "c.jsonl", desc="t", progress=False)
    return model, seen


def test_resume_restores_step_optimizer_and_rng(tmp_path: Path) -> None:
    reference, _ = _regression_run(tmp_path / "a", steps=6)
    with pytest.raises(_Crash):
        _regression_run(tmp_path / "b", steps=6, crash_at=4)
    assert json.loads((tmp_path / "b" / "checkpoint" / "checkpoint.json").read_text())["step"] == 4
    resumed, seen = _regression_run(tmp_path / "b", steps=6)
    assert seen == [4, 5], "the resumed run must start at the checkpointed step"
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # only equal if Adam moments and RNG came back too
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "c.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path: Path) -> None:
    with pytest.raises(_Crash):
        _regression_run(tmp_path, steps=6, crash_at=2)
    model = torch.nn.Linear(4, 1)
    cfg = LoopConfig(steps=2, lr=1e-2)
    with pytest.raises(UserError, match="another configuration"):
        train_loop(model, lambda s: {}, cfg, work=tmp_path, key="other", curve=tmp_path / "c.jsonl", desc="t")


def _ddp_main(rank: int, port: int, backbone: str, dataset: str, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    cfg = tiny_tower_config(Path(backbone), steps=2)
    train_towers(cfg, Path(dataset), Path(root) / "teacher", work=Path(root) / f"work{rank}", progress=False)
    torch.distributed.destroy_process_group()


def test_two_rank_gloo_training_publishes_one_teacher(tiny_model: Path, tiny_beir: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_main, args=(port, str(tiny_model), str(tiny_beir), str(tmp_path)), nprocs=2, join=True)
    info = json.loads((tmp_path / "teacher" / "train.json").read_text())
    assert info["world_size"] == 2 and resolve(tmp_path / "teacher").kind == "dual"
    assert (tmp_path / "work0" / "curves.jsonl").is_file() and not (tmp_path / "work1" / "curves.jsonl").exists()


def test_saved_llm_towers_stay_llms(tmp_path: Path) -> None:
    from tests.test_tower import make_tiny_llama

    dual = DualTower.from_backbone(make_tiny_llama(tmp_path / "llama"), ident="t", backbone="tiny-llama")
    assert dual.query.is_llm and dual.query.meta.append_eos
    dual.save(tmp_path / "dual")
    again = DualTower.load(tmp_path / "dual")
    for tower in (again.query, again.doc):
        assert tower.is_llm and tower.resolve_dtype("auto") == torch.float32 and tower.meta.append_eos


def test_a_frozen_doc_tower_keeps_the_backbone_space_and_shares_its_cached_index(
    tiny_model: Path, tiny_beir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scalingnote.index.build import cached_index

    monkeypatch.setenv("SCALINGNOTE_INDEX_CACHE_DIR", str(tmp_path / "cache" / "indexes"))
    cfg = tiny_tower_config(tiny_model, doc_tower="frozen", steps=4, bucket=2, negatives=0)
    out = train_towers(cfg, tiny_beir, tmp_path / "teacher", work=tmp_path / "work", progress=False)
    space = doc_space(resolve(out))
    assert space.sha256 == doc_space(resolve(str(tiny_model))).sha256, "the doc tower is the backbone, byte for byte"
    assert query_space(resolve(out)) == space
    trained = Tower.from_pretrained(out / "query").backbone.state_dict()
    original = Tower.from_pretrained(tiny_model).backbone.state_dict()
    assert any(not torch.equal(trained[k], original[k]) for k in original), "the query tower must have trained"
    cached = list((tmp_path / "cache" / "indexes").iterdir())
    assert len(cached) == 1
    # the teacher's index and the backbone's off-the-shelf index are the one cached build
    teacher_index = cached_index(tiny_beir, str(out), tmp_path / "ti", cfg.doc_max_length)
    baseline = cached_index(tiny_beir, str(tiny_model), tmp_path / "bi", cfg.doc_max_length)
    assert list((tmp_path / "cache" / "indexes").iterdir()) == cached
    assert teacher_index.space == space and baseline.space.sha256 == space.sha256
    assert (tmp_path / "ti" / "index.faiss").stat().st_ino == (cached[0] / "index.faiss").stat().st_ino
    with pytest.raises(UserError, match="frozen doc tower"):
        train_towers(cfg.model_copy(update={"doc_prefix": "passage: "}), tiny_beir, tmp_path / "x", work=tmp_path / "w")
