"""``scalingnote export``: a query tower → ONNX model bundle, with parity and quantisation gates.

* fp32 graph (pooling, projection and L2 normalisation inside), checked against torch: every sampled
  query must reach cosine >= ``parity`` or the export fails and nothing is published.
* int8 (dynamic, per-channel, CPU) and fp16 (only where CUDA is present) variants are kept only if their
  top-10 results over the target index overlap fp32's by >= ``overlap`` on held-out queries; int8 must also
  be faster than fp32 (one query at a time), else it is pointless.

int8 (``try_int8``): the fp32 graph is first *smoothed* (SmoothQuant, ``smooth_ffn``): each FFN linear
layer's input is divided per channel by ``s`` and its weight's input rows multiplied by ``s`` (the same
function in fp32), which moves the activation outlier channels into the per-channel-quantised weights.
Then ``INT8_RECIPES`` are tried from the fastest down; every attempt is recorded in ``quantization.json``.

Measured on SciFact test queries (top-10 overlap with fp32 over the target index; gate 0.95):

* one MatMul quantised at a time (all-MiniLM-L6-v2): attention Q/K/V/output 0.98-1.00 each; FFN input
  0.97-0.99 and FFN output (after GELU) 0.96-0.99 each. The FFN inputs carry single outlier channels
  (|x| up to ~30 where the median channel peaks near 2), which per-tensor uint8 activation scales clip.
* all-MiniLM-L6-v2: all MatMuls 0.922; FFN outputs fp32 0.947; FFN fp32 (attention-only int8) 0.962 but
  slower than fp32. Smoothed (alpha 0.85): all 0.944, FFN outputs fp32 0.961.
* 3-layer distilled student: all 0.927-0.936; FFN outputs fp32 0.940-0.948; smoothed: all 0.953,
  FFN outputs fp32 0.961.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
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

QUANT_FILE = "quantization.json"
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


SMOOTH_ALPHA = 0.85  # migration strength: 0.5 (the SmoothQuant default) hurt here, 0.85-0.95 helped


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
    import copy

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


def weight_matmuls(model: Path) -> list[str]:
    """Names of the MatMul nodes that multiply by a constant weight (what dynamic int8 quantises)."""
    import onnx

    graph = onnx.load(str(model)).graph
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]


def ffn_output_matmuls(names: Sequence[str]) -> list[str]:
    """The FFN down-projections: BERT ``layer.N/output/dense``, Llama ``mlp/down_proj``."""
    return [n for n in names if "/down_proj/" in n or ("/output/dense/" in n and "/attention/" not in n)]


def ffn_matmuls(names: Sequence[str]) -> list[str]:
    """Both FFN MatMuls: BERT ``intermediate/dense`` + ``output/dense``, Llama ``mlp/*``."""
    ffn_in = [n for n in names if "/mlp/" in n or "/intermediate/dense/" in n]
    return list(dict.fromkeys(ffn_in + ffn_output_matmuls(names)))


INT8_RECIPES: dict[str, Callable[[Sequence[str]], list[str]]] = {  # MatMuls kept fp32, fastest recipe first
    "all-matmuls": lambda names: [],
    "ffn-output-fp32": ffn_output_matmuls,
    "ffn-fp32": ffn_matmuls,
}
MAX_INT8_LATENCY = 0.9  # an int8 variant must be at least 10% faster than fp32 to be worth its accuracy loss


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


def latency_ratio(bundle_dir: Path, variant: str, texts: Sequence[str], rounds: int = 3) -> float:
    """Median batch-1 latency of ``variant`` over fp32's, one thread each, runs interleaved (fair under load)."""
    encoders = [BundleEncoder(bundle_dir, variant=v, threads=1, verify=False) for v in ("fp32", variant)]
    times: list[list[float]] = [[], []]
    sample = list(texts)[:64]
    for _ in range(rounds):
        for text in sample:
            for i, enc in enumerate(encoders):
                t0 = time.perf_counter()
                enc.encode_with_flags([text])
                times[i].append(time.perf_counter() - t0)
    return float(np.median(times[1]) / np.median(times[0]))


def top10_overlap(bundle_dir: Path, variant: str, index: LoadedIndex, texts: Sequence[str]) -> float:
    """Mean |top10(variant) ∩ top10(fp32)| / 10 over ``texts``."""
    base = BundleEncoder(bundle_dir, variant="fp32", verify=False).encode(list(texts))
    other = BundleEncoder(bundle_dir, variant=variant, verify=False).encode(list(texts))
    _, a = index.search(base, 10)
    _, b = index.search(other, 10)
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))


def try_int8(
    tmp: Path,
    tower: Tower,
    calibration: Sequence[str],
    sample: Sequence[str],
    index: LoadedIndex,
    min_overlap: float,
    write_manifest_now: Callable[[], object],
    variants: dict[str, str],
    gates: dict[str, float],
    log,
) -> dict:
    """Smooth, then try ``INT8_RECIPES`` in order; keep the first that passes the overlap gate and is
    clearly faster than fp32."""
    smoothed = tmp / "model.smoothed.onnx"  # only the quantiser's input: removed before publishing
    export_onnx(smooth_ffn(tower, calibration), smoothed)
    names = weight_matmuls(smoothed)
    path = tmp / "model.int8.onnx"
    attempts = []
    for recipe, keep in INT8_RECIPES.items():
        keep_fp32 = keep(names)
        if any(a["fp32_matmuls"] == keep_fp32 for a in attempts):
            continue  # the recipe changes nothing for this graph
        quantize_int8(smoothed, path, keep_fp32)
        variants["int8"] = path.name
        write_manifest_now()
        overlap = top10_overlap(tmp, "int8", index, sample)
        ratio = latency_ratio(tmp, "int8", sample)
        kept = overlap >= min_overlap and ratio <= MAX_INT8_LATENCY
        attempts.append(
            {
                "recipe": recipe,
                "fp32_matmuls": keep_fp32,
                "int8_matmuls": len(names) - len(keep_fp32),
                "top10_overlap": overlap,
                "latency_vs_fp32": ratio,
                "kept": kept,
            }
        )
        log(f"int8 [{recipe}]: top-10 overlap {overlap:.3f}, latency {ratio:.2f}x fp32 -> {'kept' if kept else 'no'}")
        if kept:
            gates["int8_top10_overlap"], gates["int8_latency_vs_fp32"] = overlap, ratio
            break
        del variants["int8"]
        path.unlink()
    else:
        best = max(attempts, key=lambda a: a["top10_overlap"])
        gates["int8_top10_overlap"] = best["top10_overlap"]
    smoothed.unlink()
    tried = "; ".join(
        f"{a['recipe']}: overlap {a['top10_overlap']:.3f}, {a['latency_vs_fp32']:.2f}x fp32 latency" for a in attempts
    )
    chosen = [a["recipe"] for a in attempts if a["kept"]]
    summary = f"kept {chosen[0]!r} ({tried})" if chosen else f"dropped ({tried}; gate: overlap >= {min_overlap})"
    return {
        "smoothing": {"alpha": SMOOTH_ALPHA, "calibration_queries": len(calibration)},
        "min_overlap": min_overlap,
        "attempts": attempts,
        "summary": summary,
    }


def export_bundle(
    model: str,
    out: Path,
    *,
    index_dir: Path | None = None,
    queries: Sequence[str] = (),
    calibration: Sequence[str] = (),
    int8: bool = True,
    fp16: bool | None = None,
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
        if (int8 or use_fp16) and (index is None or not queries):
            log("int8/fp16: skipped (the overlap gate needs --index and held-out --queries)")
        elif int8:
            calib = list(calibration)[:512] or sample
            attempts = try_int8(
                tmp, tower, calib, sample, index, min_overlap, lambda: manifest(gates), variants, gates, log
            )
            (tmp / QUANT_FILE).write_text(json.dumps(attempts, indent=2) + "\n", encoding="utf-8")
        if use_fp16 and index is not None and queries:
            path = tmp / "model.fp16.onnx"
            convert_fp16(tmp / "model.onnx", path)
            variants["fp16"] = path.name
            manifest(gates)
            gates["fp16_top10_overlap"] = top10_overlap(tmp, "fp16", index, sample)
            kept = gates["fp16_top10_overlap"] >= min_overlap
            log(f"fp16: {'kept' if kept else 'dropped'} (top-10 overlap {gates['fp16_top10_overlap']:.3f})")
            if not kept:
                del variants["fp16"]
                path.unlink()
        result = manifest(gates)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, out)
    return result
