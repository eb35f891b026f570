"""The closed sets of values that options, settings and artifacts share (stdlib only: the CLI imports it)."""

from typing import Literal

Dtype = Literal["auto", "fp32", "bf16"]  # a torch tower's compute dtype (auto: bf16 for LLMs on a GPU, else fp32)
Runtime = Literal["torch", "onnx"]  # what runs a torch tower's encode-only passes (index builds, teacher labels)

Variant = Literal["fp32", "int8", "fp16"]  # the ONNX graphs a bundle may carry
VariantChoice = Literal["auto", Variant]  # auto: fp16 on a GPU, int8 on a CPU, when the bundle has them; else fp32
Mode = Literal["dense", "bm25", "hybrid"]  # retrieval: the FAISS index, its BM25 side, or both fused


def runtime_key(runtime: Runtime) -> list[str]:
    """What a cache or stage key adds for ``runtime``: nothing for torch (so torch keys stay as they were)."""
    return [] if runtime == "torch" else [runtime]
