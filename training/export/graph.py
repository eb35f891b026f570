"""Read a traced ONNX graph: the weight MatMuls that int8 quantises, and which of them are FFN ones."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


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
