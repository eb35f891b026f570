"""``scalingnote export``: a query tower → ONNX model bundle, with parity and quantisation gates.

* :mod:`.graph`: the traced ONNX graph (pooling, projection and L2 norm inside);
* :mod:`.quantize`: int8 (SmoothQuant-smoothed, dynamic, per-channel) and fp16 conversions;
* :mod:`.gates`: the checks a variant must pass to be kept (torch parity, top-10 overlap, speed);
* :mod:`.bundle`: :func:`export_bundle`, which ties them together and writes ``bundle.json``.
"""

from scalingnote.training.export.bundle import ExportError, export_bundle

__all__ = ["ExportError", "export_bundle"]
