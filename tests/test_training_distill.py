"""Stage 2: distillation learns, the student is a layer cut that targets the teacher's doc tower; baselines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from scalingnote.beir import load_dataset
from scalingnote.modeling.student import fit_projection
from scalingnote.modeling.tower import Tower
from scalingnote.specs import doc_space, query_space, resolve
from scalingnote.training.distill import StudentConfig, distill, distillation_queries
from scalingnote.training.doc2query import Doc2QueryConfig, generate_queries, read_cache
from scalingnote.training.query_finetune import FinetuneConfig, train_query_finetune
from tests.conftest import tiny_distill_config
from tests.test_tower import make_tiny_llama


def _curve(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_student_is_a_layer_cut_that_targets_the_teacher(tiny_student: Path, tiny_teacher: Path) -> None:
    student = Tower.from_pretrained(tiny_student)
    teacher_ref = resolve(tiny_teacher)
    assert student.backbone.config.num_hidden_layers == 1 and len(student.backbone.encoder.layer) == 1
    assert student.projection is not None and student.dim == doc_space(teacher_ref).dim
    assert query_space(resolve(tiny_student)) == doc_space(teacher_ref)
    assert student.meta.teacher == teacher_ref.id and student.meta.role == "query"


def test_distillation_queries_exclude_test_queries_and_are_deterministic(tiny_beir: Path, tiny_model: Path) -> None:
    cfg = tiny_distill_config(tiny_model)
    queries = distillation_queries(cfg, tiny_beir)
    test = set(load_dataset(tiny_beir, ("test",)).split_queries("test").values())
    assert queries and not (set(queries) & test)
    assert queries == distillation_queries(cfg, tiny_beir)
    assert len(set(queries)) == len(queries)


def test_distillation_lowers_its_loss(
    tiny_model: Path, tiny_teacher: Path, tiny_teacher_index: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    cfg = tiny_distill_config(tiny_model, steps=40, eval_every=20, lr=3e-3, init="random", kl_weight=0.5, kl_topk=8)
    out = distill(cfg, str(tiny_teacher), tiny_beir, tmp_path / "s", work=tmp_path / "w", index=tiny_teacher_index)
    curve = _curve(out / "curves.jsonl")
    for key in ("loss", "embed_loss", "rank_loss"):
        values = [r[key] for r in curve if key in r]
        assert np.mean(values[-5:]) < 0.7 * np.mean(values[:5]), key
    cos = [r["heldout_cos"] for r in curve if "heldout_cos" in r]
    assert len(cos) == 2 and cos[-1] > cos[0]
    assert not (tmp_path / "w" / "checkpoint").exists(), "the checkpoint is removed once the student is published"


def test_ridge_initialisation_avoids_the_least_squares_blow_up(tiny_model: Path) -> None:
    tower = Tower.from_pretrained(tiny_model, projection_dim=8)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 31, generator=g)
    features = torch.cat([base, base[:, :1] + 1e-6 * torch.randn(64, 1, generator=g)], dim=1)  # near-collinear
    targets = torch.nn.functional.normalize(torch.randn(64, 8, generator=g), dim=-1).numpy()
    plain = fit_projection(tower, features, targets, ridge=0.0)
    ridge = fit_projection(tower, features, targets, ridge=1e-2)
    assert ridge < 1.0 < plain


def test_query_finetune_baseline_learns_against_the_frozen_index(
    tiny_model: Path, tiny_teacher_index: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    cfg = FinetuneConfig(
        student=tiny_distill_config(tiny_model).student, steps=30, batch_size=8, lr=3e-3, temperature=0.1
    )
    out = train_query_finetune(cfg, tiny_teacher_index, tiny_beir, tmp_path / "e", work=tmp_path / "w")
    losses = [r["loss"] for r in _curve(out / "curves.jsonl")]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    index_space = json.loads((tiny_teacher_index / "manifest.json").read_text())["space"]
    assert query_space(resolve(out)).model_dump() == index_space


def test_doc2query_cache_resumes_and_skips_done_documents(tmp_path: Path) -> None:
    from scalingnote.beir import Document

    llama = make_tiny_llama(tmp_path / "llama")
    docs = {f"d{i}": Document(f"d{i}", "dna", "the immune system fights a virus infection") for i in range(5)}
    cfg = Doc2QueryConfig(model=str(llama), per_doc=2, max_new_tokens=4, batch_size=2)
    cache = tmp_path / "d2q.jsonl"
    first = generate_queries(cfg, dict(list(docs.items())[:3]), cache, progress=False)
    assert sorted(first) == ["d0", "d1", "d2"]
    with cache.open("a") as fh:
        fh.write('{"doc_id": "d3", "quer')  # a write torn by a kill
    generate_queries(cfg, docs, cache, progress=False)
    lines = [json.loads(line) for line in cache.read_text().splitlines() if line.endswith("}")]
    assert sorted(r["doc_id"] for r in lines) == ["d0", "d1", "d2", "d3", "d4"]
    assert read_cache(cache).keys() == docs.keys()


def test_a_static_student_is_a_trained_token_table_that_ignores_word_order(
    tiny_model: Path, tiny_teacher: Path, tiny_teacher_index: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    from scalingnote.runtime.bundle import BundleEncoder
    from scalingnote.training.export import export_bundle

    cfg = tiny_distill_config(tiny_model, student=StudentConfig(backbone=str(tiny_model), layers=0, max_length=32))
    cfg = cfg.model_copy(update={"steps": 20, "lr": 1e-2, "eval_every": 10})
    before = Tower.from_pretrained(tiny_model).backbone.get_input_embeddings().weight.detach().clone()
    out = distill(cfg, str(tiny_teacher), tiny_beir, tmp_path / "s", work=tmp_path / "w", progress=False)
    student = Tower.from_pretrained(out)
    assert student.backbone.config.num_hidden_layers == 0 and student.meta.encoder.pooling == "mean"
    emb = student.backbone.embeddings
    assert not emb.position_embeddings.weight.any() and not emb.token_type_embeddings.weight.any()
    assert not torch.equal(student.backbone.get_input_embeddings().weight, before), "the token table is trained"
    a, b = student.encode(["cell energy blood", "blood energy cell"], dtype="fp32")
    assert float(a @ b) > 0.99999  # a bag of tokens: word order does not matter
    bundle = export_bundle(str(out), tmp_path / "b", index_dir=tiny_teacher_index, int8=True, log=print)
    assert bundle.gates["fp32_min_cosine"] >= 0.9999 and bundle.architecture == "static"
    assert set(bundle.variants) == {"fp32"}  # a table lookup: nothing for int8 to quantise
    onnx = BundleEncoder(tmp_path / "b", variant="fp32").encode(["cell energy blood"])
    assert float(onnx[0] @ a) > 0.9999


def test_static_tiers_are_named_static_and_take_their_own_learning_rate() -> None:
    from scalingnote.training.profiles import load_profile

    profile = load_profile("demo", overrides=["extra_students=[{layers = 0, steps = 9, lr = 0.02}]"])
    (name, cfg) = profile.students()[-1]
    assert name == "student-static" and cfg.student.static and cfg.steps == 9 and cfg.lr == 0.02
