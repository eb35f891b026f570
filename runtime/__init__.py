"""Inference runtime without torch: tokenization and the ONNX query encoder of a model bundle."""
