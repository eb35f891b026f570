"""Export: the student bundle queries the teacher's index; the parity gate catches a tampered graph; int8 gates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import scalingnote.training.export.bundle as export
from scalingnote.artifacts import read_bundle_manifest, read_index_manifest
from scalingnote.beir import load_queries
from scalingnote.errors import SpaceMismatchError
from scalingnote.index.store import LoadedIndex
from scalingnote.modeling.tower import Tower
from scalingnote.runtime.bundle import BundleEncoder
from scalingnote.training.export import ExportError, export_bundle
from scalingnote.training.export.graph import ffn_output_matmuls
from scalingnote.training.export.quantize import INT8_RECIPES, MAX_INT8_LATENCY, SmoothedLinear, smooth_ffn


def _queries(tiny_beir: Path) -> list[str]:
    return [*load_queries(tiny_beir / "queries.jsonl").values(), "cell energy", "lungs virus", "blood heart"]


def test_student_bundle_targets_the_teacher_index(tiny_student: Path, tiny_teacher_index: Path, tmp_path: Path) -> None:
    manifest = export_bundle(str(tiny_student), tmp_path / "b", index_dir=tiny_teacher_index, int8=False, log=print)
    assert manifest.space == read_index_manifest(tiny_teacher_index).space
    assert manifest.gates["fp32_min_cosine"] >= 0.9999
    vecs = BundleEncoder(tmp_path / "b").encode(["mitochondria energy"])
    _, rows = LoadedIndex.load(tiny_teacher_index).search(vecs, 3)
    assert (rows >= 0).all()


@pytest.mark.parametrize("pooling", ["last-token", "mean"])
def test_llm_teacher_query_tower_exports_with_eos_and_parity(pooling: str, tmp_path: Path) -> None:
    """An LLM dual tower's query side (the ``teacher-bundle`` stage of LLM profiles): EOS appended, parity kept."""
    from scalingnote.artifacts import EncoderConfig
    from scalingnote.modeling.dual import DualTower
    from tests.test_tower import TEXTS, make_tiny_llama

    enc = EncoderConfig(pooling=pooling, max_length=16)
    dual = DualTower.from_backbone(
        make_tiny_llama(tmp_path / "llama"), ident="t", backbone="tiny-llama", query_encoder=enc, doc_encoder=enc
    )
    dual.save(tmp_path / "dual")
    manifest = export_bundle(str(tmp_path / "dual"), tmp_path / "b", queries=list(TEXTS), int8=False, log=print)
    assert manifest.gates["fp32_min_cosine"] >= 0.9999 and manifest.encoder.pooling == pooling
    tower = Tower.from_pretrained(tmp_path / "dual" / "query")
    want = tower.encode(list(TEXTS), progress=False)
    got = BundleEncoder(tmp_path / "b").encode(list(TEXTS))
    assert np.allclose((want * got).sum(axis=1), 1.0, atol=1e-4)


def test_export_refuses_an_index_of_another_space(tiny_student: Path, tiny: object, tmp_path: Path) -> None:
    with pytest.raises(SpaceMismatchError):
        export_bundle(str(tiny_student), tmp_path / "b", index_dir=tiny.index, int8=False, log=print)
    assert not (tmp_path / "b").exists()


def _tamper(real_export):
    """Export for real, then scale one weight matrix in the ONNX graph by 1.5."""

    def tampered(tower, path: Path) -> None:
        real_export(tower, path)
        model = onnx.load(str(path))
        init = next(t for t in model.graph.initializer if len(t.dims) == 2 and t.dims[0] == t.dims[1])
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
        onnx.save(model, str(path))

    return tampered


def test_parity_gate_fails_a_tampered_graph_and_publishes_nothing(
    tiny_student: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "export_onnx", _tamper(export.export_onnx))
    with pytest.raises(ExportError, match="parity gate failed"):
        export_bundle(str(tiny_student), tmp_path / "b", int8=False, log=print)
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".b.tmp-*")), "the staging directory must be cleaned up"


def test_int8_recipes_are_gated_and_recorded(
    tiny_student: Path, tiny_teacher_index: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    queries = _queries(tiny_beir)
    impossible = export_bundle(
        str(tiny_student), tmp_path / "a", index_dir=tiny_teacher_index, queries=queries, min_overlap=1.01, log=print
    )
    assert "int8" not in impossible.variants and not (tmp_path / "a" / "model.int8.onnx").exists()
    attempts = json.loads((tmp_path / "a" / "quantization.json").read_text())["attempts"]
    layers = Tower.from_pretrained(tiny_student).backbone.config.num_hidden_layers
    assert [a["recipe"] for a in attempts] == list(INT8_RECIPES)
    assert attempts[0]["int8_matmuls"] == 6 * layers  # Q, K, V, attention output, FFN in, FFN out
    assert len(attempts[1]["fp32_matmuls"]) == layers == len(ffn_output_matmuls(attempts[1]["fp32_matmuls"]))
    assert len(attempts[2]["fp32_matmuls"]) == 2 * layers
    assert all(not a["kept"] for a in attempts)
    assert not (tmp_path / "a" / "model.smoothed.onnx").exists()

    lenient = export_bundle(
        str(tiny_student), tmp_path / "b", index_dir=tiny_teacher_index, queries=queries, min_overlap=0.0, log=print
    )
    attempts = json.loads((tmp_path / "b" / "quantization.json").read_text())["attempts"]
    faster = [a["recipe"] for a in attempts if a["latency_vs_fp32"] <= MAX_INT8_LATENCY]
    assert ("int8" in lenient.variants) == bool(faster)
    assert [a["recipe"] for a in attempts if a["kept"]] == faster[:1]
    if faster:
        enc = BundleEncoder(tmp_path / "b", variant="int8")
        ref = BundleEncoder(tmp_path / "b", variant="fp32").encode(queries)
        cos = (enc.encode(queries) * ref).sum(1)
        assert np.all(cos > 0.5) and read_bundle_manifest(tmp_path / "b", verify=True).variants["int8"]


def test_smoothing_keeps_the_function_and_wraps_every_ffn_linear(tiny_student: Path, tiny_beir: Path) -> None:
    tower = Tower.from_pretrained(tiny_student)
    texts = _queries(tiny_beir)
    smoothed = smooth_ffn(tower, texts)
    wrapped = [m for m in smoothed.backbone.modules() if isinstance(m, SmoothedLinear)]
    assert len(wrapped) == 2 * smoothed.backbone.config.num_hidden_layers
    assert not any(isinstance(m, SmoothedLinear) for m in tower.backbone.modules()), "the original is untouched"
    assert any(not torch.allclose(w.inv_scale, torch.ones_like(w.inv_scale)) for w in wrapped)
    before, after = (t.encode(texts, dtype="fp32", progress=False) for t in (tower, smoothed))
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_fp16_variant_is_gated_and_runs_on_the_cpu(
    tiny_student: Path, tiny_teacher_index: Path, tiny_beir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16 is tried where a GPU is (here: pretended); ONNX Runtime's converter output also runs on the CPU."""
    monkeypatch.setattr(export, "cuda_available", lambda: True)
    queries = _queries(tiny_beir)
    manifest = export_bundle(
        str(tiny_student), tmp_path / "b", index_dir=tiny_teacher_index, queries=queries, int8=False, log=print
    )
    assert manifest.variants == {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}
    assert manifest.gates["fp16_top10_overlap"] >= 0.95
    graph = onnx.load(str(tmp_path / "b" / "model.fp16.onnx")).graph
    floats = [t for t in graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in floats) > len(floats) / 2
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 at the boundary
    fp16 = BundleEncoder(tmp_path / "b", variant="fp16").encode(queries)
    fp32 = BundleEncoder(tmp_path / "b", variant="fp32").encode(queries)
    assert fp16.dtype == np.float32 and np.min((fp16 * fp32).sum(1)) > 0.999

    refused = export_bundle(
        str(tiny_student), tmp_path / "c", index_dir=tiny_teacher_index, queries=queries, int8=False,
        min_overlap=1.01, log=print,
    )  # fmt: skip
    assert "fp16" not in refused.variants and not (tmp_path / "c" / "model.fp16.onnx").exists()


def test_cuda_is_detected_from_a_device_not_from_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu lists the CUDA provider with no GPU present: that must not count as a GPU."""
    import onnxruntime as ort

    from scalingnote.artifacts import BundleManifest
    from scalingnote.runtime import device
    from scalingnote.runtime.bundle import pick_variant

    listed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    device.cuda_available.cache_clear()
    try:
        assert device.cuda_available() is False  # this machine (and CI) has no GPU
        manifest = BundleManifest.model_construct(variants={"fp32": "a", "int8": "b", "fp16": "c"}, name="x")
        assert pick_variant(manifest, "auto") == "int8"
    finally:
        device.cuda_available.cache_clear()
