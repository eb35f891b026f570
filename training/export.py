"""``scalingnote export``: a query tower → ONNX model bundle, with parity and quantisation gates.

* fp32 graph (pooling, projection and L2 normalisation inside), checked against torch: every sampled
  query must reach cosine >= ``parity`` or the export fails and nothing is published.
* int8 (dynamic, per-channel, CPU) and fp16 (only where CUDA is present) variants are kept only if their
  top-10 results over the target index overlap fp32's by >= ``overlap`` on held-out queries.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from index.store import LoadedIndex
from modeling.tower import Tower
from scalingnote.artifacts import (
    BUNDLE_MANIFEST,
    BundleManifest,
    check_space,
    checksums,
    now_iso,
    publish,
    read_index_manifest,
    staging_dir,
    write_manifest,
)
from scalingnote.bundle import INPUT_NAMES, OUTPUT_NAME, BundleEncoder, cuda_available
from scalingnote.encoders import query_space, resolve
from scalingnote.errors import UserError

DEFAULT_SAMPLE = [
    "what is the role of the immune system in cancer",
    "covid vaccine efficacy",
    "does aspirin reduce the risk of heart attack in older adults",
    "a",
    "Mitochondria are the powerhouse of the cell and produce ATP through oxidative phosphorylation.",
]


class ExportError(UserError):
    """The exported graph failed a gate."""


class _Graph(nn.Module):
    """What goes into ONNX: token ids → normalised embedding."""

    def __init__(self, tower: Tower):
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tower(input_ids, attention_mask)


def export_onnx(tower: Tower, path: Path) -> None:
    """Trace the tower to a single-file ONNX graph with dynamic batch and sequence axes."""
    tower = tower.eval().float()
    example = tower.batch(["an example query", "a second, somewhat longer example query for tracing"])
    dynamic = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES} | {OUTPUT_NAME: {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            _Graph(tower),
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8, per-channel weights, MatMul only (embeddings, norms and softmax stay fp32)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])


def convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def parity(tower: Tower, bundle_dir: Path, texts: Sequence[str]) -> float:
    """Smallest cosine between torch and ONNX Runtime embeddings over ``texts``."""
    ref = tower.encode(list(texts), batch_size=16, dtype="fp32", progress=False)
    got = BundleEncoder(bundle_dir, variant="fp32", verify=False).encode(list(texts), batch_size=16)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    return float(cos.min())


def top10_overlap(bundle_dir: Path, variant: str, index: LoadedIndex, texts: Sequence[str]) -> float:
    """Mean |top10(variant) ∩ top10(fp32)| / 10 over ``texts``."""
    base = BundleEncoder(bundle_dir, variant="fp32", verify=False).encode(list(texts))
    other = BundleEncoder(bundle_dir, variant=variant, verify=False).encode(list(texts))
    _, a = index.search(base, 10)
    _, b = index.search(other, 10)
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))


def export_bundle(
    model: str,
    out: Path,
    *,
    index_dir: Path | None = None,
    queries: Sequence[str] = (),
    int8: bool = True,
    fp16: bool | None = None,
    min_parity: float = 0.9999,
    min_overlap: float = 0.95,
    log=print,
) -> BundleManifest:
    """Export the query side of ``model`` to a bundle at ``out`` (published atomically)."""
    ref = resolve(model)
    if ref.kind == "bundle":
        raise UserError(f"{model} is already a bundle")
    space = query_space(ref)
    index = None
    if index_dir is not None:
        check_space(space, read_index_manifest(index_dir).doc_tower)
        index = LoadedIndex.load(index_dir)
    tower = Tower.from_pretrained(ref.tower_path("query"), ident=ref.id)
    teacher = tower.meta.teacher or (ref.id if ref.kind == "dual" else space.id)
    tmp = staging_dir(out)
    try:
        export_onnx(tower, tmp / "model.onnx")
        tok = tower.tokenizer
        tok.save(str(tmp / "tokenizer.json"))
        if tower.source is not None:
            for name in ("tokenizer_config.json", "special_tokens_map.json"):
                if (tower.source / name).is_file():
                    shutil.copyfile(tower.source / name, tmp / name)
        variants = {"fp32": "model.onnx"}

        def manifest(gates: dict[str, float]) -> BundleManifest:
            m = BundleManifest(
                name=tower.meta.id,
                teacher_id=teacher,
                doc_tower=space,
                encoder=tower.meta.encoder,
                dim=tower.dim,
                variants=dict(variants),
                parity=gates,
                created_at=now_iso(),
                files=checksums(tmp, sorted(p.name for p in tmp.iterdir() if p.name != BUNDLE_MANIFEST)),
            )
            write_manifest(tmp, BUNDLE_MANIFEST, m)
            return m

        manifest({})
        sample = list(queries)[:256] or DEFAULT_SAMPLE
        gates = {"fp32_min_cosine": parity(tower, tmp, sample)}
        if gates["fp32_min_cosine"] < min_parity:
            raise ExportError(
                f"parity gate failed: ONNX vs torch min cosine {gates['fp32_min_cosine']:.6f} < {min_parity}"
            )
        log(f"parity: min cosine {gates['fp32_min_cosine']:.6f} over {len(sample)} queries")
        use_fp16 = cuda_available() if fp16 is None else fp16
        for variant, make, wanted in (("int8", quantize_int8, int8), ("fp16", convert_fp16, use_fp16)):
            if not wanted:
                continue
            if index is None or not queries:
                log(f"{variant}: skipped (the overlap gate needs --index and held-out --queries)")
                continue
            path = tmp / f"model.{variant}.onnx"
            make(tmp / "model.onnx", path)
            variants[variant] = path.name
            manifest(gates)
            gates[f"{variant}_top10_overlap"] = top10_overlap(tmp, variant, index, sample)
            if gates[f"{variant}_top10_overlap"] >= min_overlap:
                log(f"{variant}: kept (top-10 overlap {gates[f'{variant}_top10_overlap']:.3f})")
            else:
                log(f"{variant}: dropped (top-10 overlap {gates[f'{variant}_top10_overlap']:.3f} < {min_overlap})")
                del variants[variant]
                path.unlink()
        result = manifest(gates)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, out)
    return result
