"""Quantised variants of the fp32 graph: int8 for CPUs (smoothed, dynamic, per-channel) and fp16 for GPUs.

int8: the fp32 graph is first *smoothed* (SmoothQuant, :func:`smooth_ffn`): each FFN linear layer's input
is divided per channel by ``s`` and its weight's input rows multiplied by ``s`` (the same function in fp32),
which moves activation outlier channels into the per-channel-quantised weights. Then ``INT8_RECIPES`` are
tried from the fastest down and the first that passes its gates is kept; every attempt is recorded in
``quantization.json`` (why the recipes exist: bench/README.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from scalingnote.index.store import LoadedIndex
from scalingnote.modeling.onnx_graph import export_onnx
from scalingnote.modeling.tower import Tower
from scalingnote.training.export.gates import latency_ratio, top10_overlap
from scalingnote.training.export.graph import ffn_matmuls, ffn_output_matmuls, weight_matmuls
from scalingnote.training.export.staged import StagedBundle

SMOOTH_ALPHA = 0.85  # migration strength: 0.5 (the SmoothQuant default) hurt here, 0.85-0.95 helped
INT8_RECIPES: dict[str, Callable[[Sequence[str]], list[str]]] = {  # MatMuls kept fp32, fastest recipe first
    "all-matmuls": lambda names: [],
    "ffn-output-fp32": ffn_output_matmuls,
    "ffn-fp32": ffn_matmuls,
}
MAX_INT8_LATENCY = 0.9  # an int8 variant must be at least 10% faster than fp32 to be worth its accuracy loss


class SmoothedLinear(nn.Module):
    """``linear(x / s)`` with the weight's input columns scaled by ``s``: numerically the same layer."""

    def __init__(self, linear: nn.Linear, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inv_scale", 1.0 / scale)
        self.linear = linear
        with torch.no_grad():
            linear.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


def ffn_linears(backbone: nn.Module) -> dict[str, nn.Linear]:
    """The FFN linear layers: BERT ``intermediate.dense`` / ``output.dense``, Llama ``mlp.*_proj``."""
    suffixes = ("intermediate.dense", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    return {
        name: m
        for name, m in backbone.named_modules()
        if isinstance(m, nn.Linear)
        and (name.endswith(suffixes) or (name.endswith("output.dense") and "attention" not in name))
    }


@torch.no_grad()
def smooth_ffn(tower: Tower, texts: Sequence[str], alpha: float = SMOOTH_ALPHA) -> Tower:
    """A copy of ``tower`` whose FFN inputs are smoothed: ``s_j = max|x_j|^alpha / max|w_j|^(1-alpha)``."""
    tower = copy.deepcopy(tower).eval().float()
    layers = ffn_linears(tower.backbone)
    peak: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
            peak[name] = torch.maximum(peak[name], x) if name in peak else x

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in layers.items()]
    for start in range(0, len(texts), 32):
        tower(**tower.batch(list(texts[start : start + 32])))
    for h in hooks:
        h.remove()
    for name, linear in layers.items():
        w = linear.weight.abs().amax(0)
        scale = (peak[name].clamp(min=1e-5) ** alpha / w.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-3)
        parent, _, attr = name.rpartition(".")
        setattr(tower.backbone.get_submodule(parent), attr, SmoothedLinear(linear, scale))
    return tower


def quantize_int8(src: Path, dst: Path, keep_fp32: Sequence[str] = ()) -> None:
    """Dynamic int8, per-channel weights, weight MatMuls only except ``keep_fp32`` (embeddings, norms stay fp32)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src,
        dst,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=list(keep_fp32),
    )


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and activations, fp32 inputs/outputs (ONNX Runtime's own converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def _attempt(staged: StagedBundle, recipe: str, keep_fp32: list[str], n: int, index, sample, min_overlap, log) -> dict:
    """Gate the int8 variant now in ``staged``: its top-10 overlap with fp32 and its speed."""
    overlap = top10_overlap(staged.tmp, "int8", index, sample)
    ratio = latency_ratio(staged.tmp, "int8", sample)
    kept = overlap >= min_overlap and ratio <= MAX_INT8_LATENCY
    log(f"int8 [{recipe}]: top-10 overlap {overlap:.3f}, latency {ratio:.2f}x fp32 -> {'kept' if kept else 'no'}")
    return {
        "recipe": recipe,
        "fp32_matmuls": keep_fp32,
        "int8_matmuls": n - len(keep_fp32),
        "top10_overlap": overlap,
        "latency_vs_fp32": ratio,
        "kept": kept,
    }


def try_int8(
    staged: StagedBundle,
    calibration: Sequence[str],
    sample: Sequence[str],
    index: LoadedIndex,
    min_overlap: float,
    log,
) -> dict:
    """Smooth, then try ``INT8_RECIPES`` in order; keep the first that passes the overlap gate and is
    clearly faster than fp32. Returns what ``quantization.json`` records."""
    smoothed = staged.tmp / "model.smoothed.onnx"  # only the quantiser's input: removed before publishing
    export_onnx(smooth_ffn(staged.tower, calibration), smoothed)
    names = weight_matmuls(smoothed)
    attempts: list[dict] = []
    for recipe, keep in INT8_RECIPES.items():
        keep_fp32 = keep(names)
        if any(a["fp32_matmuls"] == keep_fp32 for a in attempts):
            continue  # the recipe changes nothing for this graph
        quantize_int8(smoothed, staged.tmp / "model.int8.onnx", keep_fp32)
        staged.add("int8", "model.int8.onnx")
        attempts.append(_attempt(staged, recipe, keep_fp32, len(names), index, sample, min_overlap, log))
        if attempts[-1]["kept"]:
            staged.gates["int8_top10_overlap"] = attempts[-1]["top10_overlap"]
            staged.gates["int8_latency_vs_fp32"] = attempts[-1]["latency_vs_fp32"]
            break
        staged.drop("int8")
    else:
        staged.gates["int8_top10_overlap"] = max(a["top10_overlap"] for a in attempts)
    smoothed.unlink()
    return {
        "smoothing": {"alpha": SMOOTH_ALPHA, "calibration_queries": len(calibration)},
        "min_overlap": min_overlap,
        "attempts": attempts,
        "summary": _summary(attempts, min_overlap),
    }


def _summary(attempts: list[dict], min_overlap: float) -> str:
    tried = "; ".join(
        f"{a['recipe']}: overlap {a['top10_overlap']:.3f}, {a['latency_vs_fp32']:.2f}x fp32 latency" for a in attempts
    )
    chosen = [a["recipe"] for a in attempts if a["kept"]]
    return f"kept {chosen[0]!r} ({tried})" if chosen else f"dropped ({tried}; gate: overlap >= {min_overlap})"


def try_fp16(staged: StagedBundle, sample: Sequence[str], index: LoadedIndex, min_overlap: float, log) -> None:
    """Add the fp16 variant if its top-10 results overlap fp32's by at least ``min_overlap``."""
    convert_fp16(staged.tmp / "model.onnx", staged.tmp / "model.fp16.onnx")
    staged.add("fp16", "model.fp16.onnx")
    overlap = staged.gates["fp16_top10_overlap"] = top10_overlap(staged.tmp, "fp16", index, sample)
    kept = overlap >= min_overlap
    log(f"fp16: {'kept' if kept else 'dropped'} (top-10 overlap {overlap:.3f})")
    if not kept:
        staged.drop("fp16")
