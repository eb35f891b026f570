"""Bodies of the embedding endpoints: TEI's ``POST /embed``, OpenAI's ``POST /v1/embeddings`` and ``GET /info``.

Requests are strict and reject unknown fields, like every request of the service (:class:`schemas.Request`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from scalingnote.index.query import Mode
from scalingnote.service.schemas import Request


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("text must contain a non-whitespace character")
    return text


def _no_token_ids(value: object) -> object:
    """Token-id arrays (the other input form of TEI and OpenAI) are refused by name, not as a type error."""
    if isinstance(value, list) and any(isinstance(v, list) or type(v) is int for v in value):
        raise PydanticCustomError("token_ids", "token-id arrays are not supported: send the texts")
    return value


Text = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]
Inputs = Annotated[
    Text | Annotated[list[Text], Field(min_length=1)],
    BeforeValidator(_no_token_ids),
    Field(description="A text, or a list of 1 to SCALINGNOTE_MAX_BATCH_QUERIES texts."),
]
Dimensions = Annotated[
    int | None,
    Field(ge=1, description="Must be the bundle's dim (GET /info): its vectors were not trained for truncation."),
]


class EmbedRequest(Request):
    """TEI's ``/embed`` body."""

    inputs: Inputs
    normalize: bool = Field(
        True, description="L2-normalise. false only for a bundle whose graph does not normalise (GET /info)."
    )
    truncate: bool | None = Field(
        False, description="Cut texts over max_input_length tokens; false (or null): such a text is a 422."
    )
    truncation_direction: Literal["Right", "right", "Left", "left"] = Field(
        "Right", description="Right only: the bundle's tokenizer keeps a text's first tokens."
    )
    prompt_name: str | None = Field(None, description="null only: the bundle has no named prompts.")
    dimensions: Dimensions = None


class OpenAIEmbeddingRequest(Request):
    """OpenAI's ``/v1/embeddings`` body."""

    input: Inputs
    model: str = Field(description="The served model: served_model_name of GET /info.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector as its float32 little-endian bytes."
    )
    dimensions: Dimensions = None
    user: str | None = Field(None, description="An end-user id (accepted, not used).")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding] = Field(description="One per input, in request order.")
    model: str
    usage: Usage = Field(description="Tokens embedded (the bundle's tokenizer, special tokens and prefix included).")


class EmbeddingModel(BaseModel):
    pooling: str


class ModelType(BaseModel):
    embedding: EmbeddingModel


class Info(BaseModel):
    """TEI's ``/info`` fields that apply, plus the served index."""

    model_id: str
    served_model_name: str = Field(description="What /v1/embeddings takes as model.")
    model_dtype: str
    model_type: ModelType
    max_input_length: int = Field(description="Tokens per text (longer: cut with truncate=true, else 422).")
    max_batch_requests: int = Field(description="Texts per batch (SCALINGNOTE_MAX_BATCH_SIZE).")
    max_client_batch_size: int = Field(description="Texts per request (SCALINGNOTE_MAX_BATCH_QUERIES).")
    auto_truncate: bool = Field(description="Whether truncate defaults to true.")
    version: str
    dim: int
    normalized: bool = Field(description="The bundle's graph L2-normalises (then /embed's normalize=false is a 422).")
    variant: str
    index_version: str
    modes: list[Mode]
