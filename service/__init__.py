"""The online ``/search`` service: FastAPI + ONNX Runtime query encoder + FAISS, no torch."""
