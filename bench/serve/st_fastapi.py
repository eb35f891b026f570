"""Baseline (b): what a user would write instead, for comparison only.

A plain FastAPI ``def`` endpoint (run in Starlette's thread pool) that encodes each request on its own with
sentence-transformers (torch) and searches the same FAISS index. Same request and response shape as the real
service; no batching, no ONNX. ``--model`` is a sentence-transformers directory or a built-in name (its
package's model directory, loaded offline).

    python bench/serve/st_fastapi.py --model minilm-l6 --index artifacts/demo/teacher-index --port 8200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field


class Body(BaseModel):
    query: str = Field(min_length=1)
    k: int = Field(10, ge=1, le=1000)


def create_app(model: str, index_dir: Path) -> FastAPI:
    import torch
    from sentence_transformers import SentenceTransformer

    from scalingnote.index import versions
    from scalingnote.index.store import LoadedIndex
    from scalingnote.specs import resolve

    torch.set_num_threads(1)
    path = Path(model) if Path(model).is_dir() else resolve(model).tower_path("query")
    encoder = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    index = LoadedIndex.load(versions.current_path(index_dir) if versions.is_root(index_dir) else index_dir)
    app = FastAPI(title="sentence-transformers /search baseline")

    @app.post("/search")
    def search(body: Body) -> dict:
        started = time.perf_counter()
        vectors = encoder.encode([body.query], batch_size=1, normalize_embeddings=True, convert_to_numpy=True)
        (hits,) = index.hits(vectors, body.k)
        results = [h.model_dump(exclude_none=True) for h in hits]
        took = round((time.perf_counter() - started) * 1000, 3)
        return {"results": results, "took_ms": took, "index_version": index.manifest.version, "truncated": False}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="sentence-transformers directory or built-in name.")
    parser.add_argument("--index", type=Path, required=True, help="Index directory or index root.")
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model, args.index), host="127.0.0.1", port=args.port, access_log=False)


if __name__ == "__main__":
    main()
