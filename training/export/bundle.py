"""``export_bundle``: the query side of a model → an ONNX bundle directory, gated, published atomically.

* fp32 graph, checked against torch: every sampled query must reach cosine >= ``min_parity`` or the export
  fails and nothing is published.
* int8 (CPU) and fp16 (only where a CUDA device is present) variants are kept only if their top-10 results
  over the target index overlap fp32's by >= ``min_overlap`` on held-out queries; int8 must also be faster.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from scalingnote.artifacts import (
    TOKENIZER_FILE,
    BundleManifest,
    check_space,
    publish_dir,
    read_index_manifest,
    staging_dir,
)
from scalingnote.errors import UserError
from scalingnote.index.store import LoadedIndex
from scalingnote.modeling.onnx_graph import export_onnx
from scalingnote.modeling.tower import Tower
from scalingnote.runtime.device import cuda_available
from scalingnote.runtime.tokenization import copy_sidecars
from scalingnote.specs import query_space, resolve
from scalingnote.training.export.gates import ExportError, parity
from scalingnote.training.export.graph import weight_matmuls
from scalingnote.training.export.quantize import try_fp16, try_int8
from scalingnote.training.export.staged import StagedBundle

QUANT_FILE = "quantization.json"
DEFAULT_SAMPLE = [
    "what is the role of the immune system in cancer",
    "covid vaccine efficacy",
    "does aspirin reduce the risk of heart attack in older adults",
    "a",
    "Mitochondria are the powerhouse of the cell and produce ATP through oxidative phosphorylation.",
]

__all__ = ["ExportError", "export_bundle"]


def export_bundle(
    model: str,
    out: Path,
    *,
    index_dir: Path | None = None,
    queries: Sequence[str] = (),
    calibration: Sequence[str] = (),
    int8: bool = True,
    min_parity: float = 0.9999,
    min_overlap: float = 0.95,
    log=print,
) -> BundleManifest:
    """Export the query side of ``model`` to a bundle at ``out`` (published atomically).

    ``queries`` (held out) feed the gates; ``calibration`` (other queries, default: the gate sample) sets the
    int8 smoothing scales.
    """
    ref = resolve(model)
    if ref.kind == "bundle":
        raise UserError(f"{model} is already a bundle")
    space = query_space(ref)
    index = None
    if index_dir is not None:
        check_space(space, read_index_manifest(index_dir).space)
        index = LoadedIndex.load(index_dir)
    tower = Tower.from_pretrained(ref.tower_path("query"), ident=ref.id)
    teacher = tower.meta.teacher or (ref.id if ref.kind == "dual" else space.id)
    staged = StagedBundle(staging_dir(out), tower, space, teacher)
    try:
        result = _build(staged, index, list(queries), list(calibration), int8, min_parity, min_overlap, log)
    except BaseException:
        shutil.rmtree(staged.tmp, ignore_errors=True)
        raise
    publish_dir(staged.tmp, out)
    return result


def _build(
    staged: StagedBundle,
    index: LoadedIndex | None,
    queries: list[str],
    calibration: list[str],
    int8: bool,
    min_parity: float,
    min_overlap: float,
    log,
) -> BundleManifest:
    """Write the graph and tokenizer into the staging dir, then gate each variant."""
    tmp, tower = staged.tmp, staged.tower
    export_onnx(tower, tmp / "model.onnx")
    tower.tokenizer.save(str(tmp / TOKENIZER_FILE))
    copy_sidecars(tower.source, tmp)
    staged.write()
    sample = queries[:256] or DEFAULT_SAMPLE
    staged.gates["fp32_min_cosine"] = cosine = parity(tower, tmp, sample)
    if cosine < min_parity:
        raise ExportError(f"parity gate failed: ONNX vs torch min cosine {cosine:.6f} < {min_parity}")
    log(f"parity: min cosine {cosine:.6f} over {len(sample)} queries")
    fp16 = cuda_available()
    if (int8 or fp16) and (index is None or not queries):
        log("int8/fp16: skipped (the overlap gate needs --index and held-out --queries)")
        return staged.write()
    if int8 and not weight_matmuls(tmp / "model.onnx"):
        log("int8: not applicable (the graph has no weight MatMul to quantise, e.g. a static student's lookup)")
    elif int8:
        report = try_int8(staged, calibration[:512] or sample, sample, index, min_overlap, log)
        (tmp / QUANT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if fp16:
        try_fp16(staged, sample, index, min_overlap, log)
    return staged.write()
