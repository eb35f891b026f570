"""Baseline (b): the naive way to serve /search, for comparison only.

A plain FastAPI ``def`` endpoint (run in Starlette's thread pool) that encodes each request on its own with
transformers + torch (the same query tower the bundle was exported from) and searches the same FAISS index.
Same request and response shape as the real service; no batching, no ONNX.

    python bench/serve/naive_torch.py --model minilm-l6 --index artifacts/minilm-scifact --port 8200
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
    from scalingnote.index import versions
    from scalingnote.index.store import LoadedIndex
    from scalingnote.modeling.loading import load_query_encoder

    encoder = load_query_encoder(model)
    index = LoadedIndex.load(versions.current_path(index_dir) if versions.is_root(index_dir) else index_dir)
    app = FastAPI(title="naive torch /search baseline")

    @app.post("/search")
    def search(body: Body) -> dict:
        started = time.perf_counter()
        (hits,) = index.hits(encoder.encode([body.query], batch_size=1), body.k)
        results = [h.model_dump() for h in hits]
        took = round((time.perf_counter() - started) * 1000, 3)
        return {"results": results, "took_ms": took, "index_version": index.manifest.version, "truncated": False}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Query tower: built-in name, HF/tower/student directory.")
    parser.add_argument("--index", type=Path, required=True, help="Index directory or index root.")
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model, args.index), host="127.0.0.1", port=args.port, access_log=False)


if __name__ == "__main__":
    main()
