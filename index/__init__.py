"""FAISS indexes of doc-tower embeddings: build (torch side) and load/search (serving side, no torch)."""
