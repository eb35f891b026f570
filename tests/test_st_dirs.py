"""Sentence-transformers directories: saved towers and students load in ``SentenceTransformer`` with our vectors,
and an input model's ``2_Dense`` becomes the tower's projection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scalingnote.artifacts import EncoderConfig
from scalingnote.errors import UserError
from scalingnote.modeling.dual import DualTower
from scalingnote.modeling.loading import load_query_encoder
from scalingnote.modeling.st_dir import IDENTITY
from scalingnote.modeling.student import build_student, make_static
from scalingnote.modeling.tower import PROJECTION_FILE, Tower
from scalingnote.specs import doc_space, resolve, st_modules
from tests.test_tower import TEXTS, make_tiny_llama


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def _st_encode(path: Path, **kwargs: object) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(TEXTS, convert_to_numpy=True, **kwargs)


def _ours(tower: Tower) -> np.ndarray:
    return tower.eval().encode(TEXTS, dtype="fp32", progress=False)


def _randomise(projection: torch.nn.Linear, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        projection.weight.normal_()
        projection.bias.normal_()


def test_query_tower_with_projection_and_prefix_loads_in_sentence_transformers(tiny_model: Path, tmp_path) -> None:
    encoder = EncoderConfig(pooling="mean", max_length=64, prefix="query: ")
    tower = Tower.from_pretrained(tiny_model, encoder=encoder, projection_dim=8)
    _randomise(tower.projection)
    tower.save(tmp_path / "q", id="tiny-query", role="query")
    modules = json.loads((tmp_path / "q" / "modules.json").read_text())
    assert [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in modules] == [
        ("", "Transformer"),
        ("1_Pooling", "Pooling"),
        ("2_Dense", "Dense"),
        ("3_Normalize", "Normalize"),
    ]
    dense = json.loads((tmp_path / "q" / "2_Dense" / "config.json").read_text())
    assert dense == {"in_features": 32, "out_features": 8, "bias": True, "activation_function": IDENTITY}
    st = json.loads((tmp_path / "q" / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": "query: "} and st["default_prompt_name"] == "query"
    assert json.loads((tmp_path / "q" / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    ours = _ours(tower)
    assert _min_cosine(_st_encode(tmp_path / "q", prompt_name="query"), ours) >= 0.9999
    assert _min_cosine(_st_encode(tmp_path / "q"), ours) >= 0.9999  # the prefix is the default prompt
    again = Tower.from_pretrained(tmp_path / "q")  # our own files still load as before
    np.testing.assert_allclose(_ours(again), ours, atol=1e-6)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_tower_without_projection_or_normalisation_loads_in_sentence_transformers(
    tiny_model: Path, tmp_path: Path, pooling: str
) -> None:
    tower = Tower.from_pretrained(tiny_model, encoder=EncoderConfig(pooling=pooling, normalize=False, max_length=16))
    tower.save(tmp_path / "t", role="doc")
    kinds = [m["type"].rsplit(".", 1)[-1] for m in json.loads((tmp_path / "t" / "modules.json").read_text())]
    assert kinds == ["Transformer", "Pooling"]
    theirs, ours = _st_encode(tmp_path / "t"), _ours(tower)
    assert _min_cosine(theirs, ours) >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), np.linalg.norm(ours, axis=1), rtol=1e-4)


def test_last_token_decoder_tower_loads_in_sentence_transformers(tmp_path: Path) -> None:
    tower = Tower.from_pretrained(make_tiny_llama(tmp_path / "llama"), projection_dim=4)
    tower.save(tmp_path / "t", role="query")
    assert json.loads((tmp_path / "t" / "1_Pooling" / "config.json").read_text())["pooling_mode_lasttoken"]
    assert _min_cosine(_st_encode(tmp_path / "t"), _ours(tower)) >= 0.9999


def test_static_student_loads_in_sentence_transformers(tiny_model: Path, tmp_path: Path) -> None:
    student = build_student(
        tiny_model, ident="static", layers=0, dim=8, encoder=EncoderConfig(pooling="mean", max_length=32)
    )
    make_static(student.backbone)
    _randomise(student.projection)
    student.save(tmp_path / "s", role="query")
    assert Tower.from_pretrained(tmp_path / "s").static
    assert _min_cosine(_st_encode(tmp_path / "s"), _ours(student)) >= 0.9999


def _st_model_with_dense(tiny_model: Path, out: Path, pooling: str = "cls", **dense: object) -> Path:
    """A sentence-transformers model dir (saved by ST itself): tiny BERT, pooling, a 32 → 16 Dense, Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(1)
    modules = [Transformer(str(tiny_model), max_seq_length=48), Pooling(32, pooling), Dense(32, 16, **dense)]
    SentenceTransformer(modules=[*modules, Normalize()], device="cpu").save(str(out))
    return out


@pytest.mark.parametrize("bias", [True, False])
def test_an_input_models_dense_becomes_the_projection(tiny_model: Path, tmp_path: Path, bias: bool) -> None:
    path = _st_model_with_dense(tiny_model, tmp_path / "st", activation_function=torch.nn.Identity(), bias=bias)
    tower = Tower.from_pretrained(path)
    assert tower.projection is not None and (tower.projection.bias is not None) == bias
    assert tower.dim == 16 and tower.meta.encoder.pooling == "cls" and tower.meta.encoder.max_length == 48
    assert doc_space(resolve(str(path))).dim == 16
    loaded = load_query_encoder(str(path))
    assert _min_cosine(_st_encode(path), loaded.encode(TEXTS, dtype="fp32")) >= 0.9999
    tower.save(tmp_path / "again", role="query")  # and it is saved as our projection and as a Dense again
    assert (tmp_path / "again" / PROJECTION_FILE).is_file()
    assert _min_cosine(_st_encode(tmp_path / "again"), _ours(tower)) >= 0.9999


def test_a_dense_with_an_activation_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    path = _st_model_with_dense(tiny_model, tmp_path / "st", activation_function=torch.nn.Tanh())
    with pytest.raises(UserError, match=r"Dense activation torch\.nn\.modules\.activation\.Tanh is not supported"):
        Tower.from_pretrained(path)


def test_a_frozen_doc_tower_keeps_the_backbones_dense_byte_for_byte(tiny_model: Path, tmp_path: Path) -> None:
    path = _st_model_with_dense(tiny_model, tmp_path / "st", pooling="mean", activation_function=torch.nn.Identity())
    normalize = [folder for kind, folder in st_modules(path) if kind == "Normalize"]
    shutil.rmtree(normalize[0])  # a hub or PyPI copy has no folder for a module without files
    dual = DualTower.from_backbone(path, ident="frozen", backbone=str(path))
    space = dual.save(tmp_path / "dual", frozen_doc=path)
    assert space == doc_space(resolve(str(tmp_path / "dual")))
    assert space.sha256 == doc_space(resolve(str(path))).sha256 and space.dim == 16
    doc = Tower.from_pretrained(tmp_path / "dual" / "doc")
    assert not (tmp_path / "dual" / "doc" / PROJECTION_FILE).exists() and doc.dim == 16
    assert _min_cosine(_ours(doc), _st_encode(path)) >= 0.9999
