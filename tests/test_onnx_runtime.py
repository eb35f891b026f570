"""encode_runtime ``onnx``: a tower's encode-only passes (index builds, teacher labels) on ONNX Runtime."""

from pathlib import Path

import numpy as np
import pytest

from scalingnote.errors import UserError
from scalingnote.index.build import build_index, cached_index
from scalingnote.index.ray_build import RayOptions
from scalingnote.index.store import LoadedIndex
from scalingnote.modeling import onnx_tower
from scalingnote.modeling.onnx_tower import OnnxTower
from scalingnote.modeling.tower import Tower
from scalingnote.paths import index_cache_root
from scalingnote.specs import resolve
from scalingnote.training.distill import teacher_embeddings
from scalingnote.training.profiles import load_profile

TEXTS = ["short", "a query of a few more words", "a much longer text " * 12, "b", "another query here"]


def test_onnx_tower_gives_torchs_vectors_in_fp32_only(tiny_model: Path) -> None:
    tower = Tower.from_pretrained(tiny_model)
    vecs = OnnxTower(tower).encode(TEXTS, batch_size=2)
    assert vecs.shape == (len(TEXTS), tower.dim) and vecs.dtype == np.float32
    assert (vecs * tower.encode(TEXTS, dtype="fp32")).sum(1).min() > 0.9999
    with pytest.raises(UserError, match="fp32 only"):
        OnnxTower(tower).encode(TEXTS, dtype="bf16")


def test_onnx_tower_is_refused_when_it_differs_from_torch(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_tower, "MIN_PARITY", 1.5)  # no cosine reaches it
    encoder = OnnxTower(Tower.from_pretrained(tiny_model))  # traced and checked on first use
    with pytest.raises(UserError, match="ONNX Runtime differs from torch"):
        encoder.encode(TEXTS)


def test_an_onnx_built_index_holds_torchs_vectors_and_is_cached_apart(
    tiny_beir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    build_index(tiny_beir, str(tiny_model), tmp_path / "torch", shard_size=7, progress=False)
    build_index(tiny_beir, str(tiny_model), tmp_path / "onnx", shard_size=7, progress=False, runtime="onnx")
    torch_idx, onnx_idx = LoadedIndex.load(tmp_path / "torch"), LoadedIndex.load(tmp_path / "onnx")
    assert onnx_idx.ids == torch_idx.ids
    assert (onnx_idx.vectors() * torch_idx.vectors()).sum(1).min() > 0.9999
    with pytest.raises(UserError, match="onnx runtime embeds in this process"):
        build_index(tiny_beir, str(tiny_model), tmp_path / "ray", ray=RayOptions(), runtime="onnx", progress=False)
    before = set(index_cache_root().iterdir()) if index_cache_root().is_dir() else set()
    cached_index(tiny_beir, str(tiny_model), tmp_path / "c-torch", max_length=24, progress=False)  # a length no other
    cached_index(tiny_beir, str(tiny_model), tmp_path / "c-onnx", max_length=24, progress=False, runtime="onnx")
    assert len(set(index_cache_root().iterdir()) - before) == 2, "one cache entry per runtime"


def test_teacher_labels_on_onnx_match_torch_and_are_cached_apart(tiny_teacher: Path, tmp_path: Path) -> None:
    ref = resolve(str(tiny_teacher))
    on_torch = teacher_embeddings(ref, TEXTS, tmp_path, progress=False)
    on_onnx = teacher_embeddings(ref, TEXTS, tmp_path, progress=False, runtime="onnx")
    assert (on_torch * on_onnx).sum(1).min() > 0.9999
    assert len(list(tmp_path.glob("teacher-*.npy"))) == 2


def test_profiles_choose_the_runtime() -> None:
    assert load_profile("cpu-scale").encode_runtime == "onnx"
    assert load_profile("cpu").encode_runtime == "torch"
    with pytest.raises(UserError, match="encode_runtime"):
        load_profile("cpu", overrides=["encode_runtime=tensorrt"])
