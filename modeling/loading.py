"""``load_query_encoder``: the query side of any encoder spec, behind one ``encode`` signature.

An ONNX bundle loads as a :class:`~scalingnote.runtime.bundle.BundleEncoder` (no torch is imported);
anything else (built-in, HF directory, tower, student, teacher) as the torch :class:`Tower` of its query side.
"""

from __future__ import annotations

from scalingnote.runtime.encoder import QueryEncoder
from scalingnote.specs import EncoderRef, resolve


def load_query_encoder(
    spec: str | EncoderRef, variant: str = "auto", threads: int | None = None, verify: bool = True
) -> QueryEncoder:
    """The query encoder of ``spec``: a bundle's ONNX ``variant``, else the torch query tower (in eval mode).

    ``threads`` pins ONNX Runtime's intra-op threads, or torch's for a tower (process-wide).
    """
    ref = spec if isinstance(spec, EncoderRef) else resolve(spec)
    if ref.kind == "bundle":
        from scalingnote.runtime.bundle import BundleEncoder

        return BundleEncoder(ref.path, variant=variant, threads=threads, verify=verify)
    import torch

    from scalingnote.modeling.tower import Tower

    if threads:
        torch.set_num_threads(threads)
    return Tower.from_pretrained(ref.tower_path("query"), ident=ref.id).eval()


def query_params(encoder: QueryEncoder) -> int:
    """Weights of a query encoder: a tower's parameters (BERT's unused pooler left out) or an ONNX graph's."""
    from scalingnote.runtime.bundle import BundleEncoder

    if isinstance(encoder, BundleEncoder):
        return onnx_params(encoder)
    return sum(p.numel() for n, p in encoder.named_parameters() if ".pooler." not in n)  # type: ignore[attr-defined]


def onnx_params(encoder) -> int:
    """Elements of the float and int8 initializers of a bundle's loaded graph (not shape constants)."""
    import numpy as np
    import onnx

    kinds = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    model = encoder.path / encoder.manifest.variants[encoder.variant]
    graph = onnx.load(str(model), load_external_data=False).graph
    return int(sum(np.prod(t.dims) for t in graph.initializer if t.data_type in kinds and len(t.dims) >= 1))
