"""Where inference runs: whether ONNX Runtime can use a CUDA device that is really there."""

from __future__ import annotations

from functools import cache

# A serialised ONNX model, ``y = Identity(x)`` over float[1] (ir_version 8, opset 13): the smallest graph
# a session can open, so the probe needs neither the ``onnx`` package nor a bundle.
PROBE_GRAPH = bytes.fromhex(
    "08083a3b0a100a017812017922084964656e74697479120570726f62655a0f0a0178120a0a08080112040a02080162"
    "0f0a0179120a0a08080112040a02080142040a00100d"
)


@cache
def cuda_available() -> bool:
    """True only when ONNX Runtime's CUDA provider runs a graph on an actual GPU.

    onnxruntime-gpu lists ``CUDAExecutionProvider`` even where no GPU (or no CUDA runtime) exists, and a
    session then falls back to the CPU silently; so a probe graph is opened and its providers are read.
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        session = ort.InferenceSession(PROBE_GRAPH, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception:  # ORT raises its own exception types when the CUDA libraries cannot load
        return False
    return session.get_providers()[0] == "CUDAExecutionProvider"
