"""``POST /embed`` (TEI's shape), ``POST /v1/embeddings`` (OpenAI's) and ``GET /info``.

The vectors are the served bundle's query vectors, computed as embedding-only jobs of the same batcher as
``/search``: the same queue limits (429), timeout (503), text cap and metrics. A text over the bundle's max
tokens is a 422 unless TEI's ``truncate`` is true (TEI's answer since 1.9; OpenAI's route never truncates,
as TEI's with ``auto_truncate`` off). Options the bundle cannot honour are a 422, never ignored.
"""

from __future__ import annotations

import base64

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Request, Response, status

import scalingnote
from scalingnote.runtime.bundle import BundleEncoder
from scalingnote.service.deps import BatcherDep, EngineDep, SettingsDep
from scalingnote.service.embedding_schemas import (
    EmbeddingModel,
    EmbedRequest,
    Info,
    ModelType,
    OpenAIEmbeddingList,
    OpenAIEmbeddingRequest,
)
from scalingnote.service.routes.search import await_job, error_responses

router = APIRouter(tags=["embeddings"])
DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}  # variant → TEI's model_dtype

ERRORS = error_responses(
    "Invalid body: empty/blank text, token ids, more than SCALINGNOTE_MAX_BATCH_QUERIES texts, wrong type, "
    "unknown field, a text over max_input_length tokens (without truncate), an option the bundle cannot "
    "honour (dimensions, normalize=false, prompt_name, Left truncation, another model)."
)


def _invalid(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def _check_dimensions(encoder: BundleEncoder, dimensions: int | None) -> None:
    if dimensions is not None and dimensions != encoder.dim:
        raise _invalid(
            f"dimensions: bundle {encoder.name!r} was not trained for truncation (Matryoshka): only its full "
            f"dimension {encoder.dim} is available"
        )


async def _embed(
    request: Request, batcher: BatcherDep, settings: SettingsDep, inputs: str | list[str], field: str, cut: bool
) -> tuple[np.ndarray, int]:
    """The vectors of ``inputs`` and their tokens in all; a text over max tokens is a 422 unless ``cut``."""
    texts = [inputs] if isinstance(inputs, str) else inputs
    if len(texts) > settings.max_batch_queries:
        raise _invalid(f"{field}: at most {settings.max_batch_queries} texts per request, got {len(texts)}")
    out = await await_job(batcher.enqueue(texts, None), request.receive, settings.request_timeout_s)
    if not cut and any(out.truncated):
        rows = ", ".join(str(i) for i, t in enumerate(out.truncated) if t)
        hint = " (or send truncate=true)" if field == "inputs" else ""
        raise _invalid(
            f"{field}: text {rows} is longer than max_input_length "
            f"({batcher.engine.encoder.manifest.encoder.max_length} tokens, GET /info): send shorter texts{hint}"
        )
    assert out.vectors is not None  # set for every job
    return out.vectors, sum(out.tokens)


def _unit(encoder: BundleEncoder, vectors: np.ndarray) -> np.ndarray:
    """``vectors`` L2-normalised (as they are when the bundle's graph normalises)."""
    if encoder.manifest.encoder.normalize:
        return vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


def _json(payload: object) -> Response:
    """``payload`` as JSON; numpy float32 rows keep float32's shortest form (``0.1``, not ``0.10000000149``)."""
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


@router.post("/embed", response_model=list[list[float]], responses=ERRORS)
async def embed(body: EmbedRequest, request: Request, batcher: BatcherDep, settings: SettingsDep) -> Response:
    """TEI's `/embed`: one vector per text, in request order (a single text too is answered `[[...]]`)."""
    encoder = batcher.engine.encoder
    if body.truncation_direction.lower() == "left":
        raise _invalid("truncation_direction: only Right: the bundle's tokenizer keeps a text's first tokens")
    if body.prompt_name is not None:
        raise _invalid(f"prompt_name: bundle {encoder.name!r} has no named prompts (its query prefix always applies)")
    if not body.normalize and encoder.manifest.encoder.normalize:
        raise _invalid(f"normalize: bundle {encoder.name!r} L2-normalises inside its graph: false is not available")
    _check_dimensions(encoder, body.dimensions)
    vectors, _ = await _embed(request, batcher, settings, body.inputs, "inputs", cut=bool(body.truncate))
    return _json(_unit(encoder, vectors) if body.normalize else vectors)


@router.post("/v1/embeddings", response_model=OpenAIEmbeddingList, responses=ERRORS)
async def openai_embeddings(
    body: OpenAIEmbeddingRequest, request: Request, batcher: BatcherDep, settings: SettingsDep
) -> Response:
    """OpenAI's embeddings API; `usage` counts the tokens the bundle's tokenizer gives each text."""
    encoder = batcher.engine.encoder
    if body.model != encoder.name:
        raise _invalid(f"model: this service serves {encoder.name!r} only (served_model_name of GET /info)")
    _check_dimensions(encoder, body.dimensions)
    vectors, tokens = await _embed(request, batcher, settings, body.input, "input", cut=False)
    vectors = _unit(encoder, vectors)
    rows: list = list(vectors)
    if body.encoding_format == "base64":
        rows = [base64.b64encode(v.astype("<f4", copy=False)).decode() for v in rows]
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(rows)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json({"object": "list", "data": data, "model": encoder.name, "usage": usage})


@router.get("/info", responses={503: ERRORS[503]})
async def info(engine: EngineDep, settings: SettingsDep) -> Info:
    """The served model and index (TEI's `/info` field names where they apply)."""
    encoder, config = engine.encoder, engine.encoder.manifest.encoder
    with engine.lease() as gen:
        assert gen.index is not None  # a leased generation is never released
        modes = list(gen.index.modes)
    return Info(
        model_id=encoder.name,
        served_model_name=encoder.name,
        model_dtype=DTYPES.get(encoder.variant, encoder.variant),
        model_type=ModelType(embedding=EmbeddingModel(pooling=config.pooling)),
        max_input_length=config.max_length,
        max_batch_requests=settings.max_batch_size,
        max_client_batch_size=settings.max_batch_queries,
        auto_truncate=False,
        version=scalingnote.__version__,
        dim=encoder.dim,
        normalized=config.normalize,
        variant=encoder.variant,
        index_version=gen.version,
        modes=modes,
    )
