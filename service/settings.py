"""Service settings: environment variables prefixed ``SCALINGNOTE_`` and an optional ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scalingnote.choices import VariantChoice
from scalingnote.index.milvus_backend import ALIAS_PATTERN, DEFAULT_ALIAS

MIN_API_KEY_LENGTH = 32
LogLevel = Literal["critical", "error", "warning", "info", "debug"]  # uvicorn's, minus trace (not a logging level)


class Settings(BaseSettings):
    """Every knob of ``scalingnote serve``; CLI options override the environment."""

    model_config = SettingsConfigDict(env_prefix="SCALINGNOTE_", env_file=".env", extra="ignore")

    bundle: Path | None = Field(None, description="Model bundle directory (ONNX query encoder).")
    index_root: Path | None = Field(
        None, description="Index root (ROOT/versions/<id> + ROOT/current) or a plain, static index directory."
    )
    backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="faiss: the index's FAISS files; milvus: the collection MILVUS_ALIAS points to."
    )
    milvus_uri: str | None = Field(
        None, description="A Milvus Lite .db file (one process only), or http://host:port (Lite server, cluster)."
    )
    milvus_alias: str = Field(DEFAULT_ALIAS, pattern=ALIAS_PATTERN, description="Milvus alias the service follows.")
    workers: int = Field(
        1,
        ge=1,
        description="Server processes sharing the port, each with its own engine, batcher and metrics "
        "(RAM x workers; /metrics shows the process that answers the scrape, its pid in scalingnote_process_info).",
    )
    reuse_port: bool = Field(
        True,
        description="With several workers, give each its own SO_REUSEPORT socket so the kernel spreads "
        "connections over them (false: uvicorn's one shared socket, which the first worker to wake drains).",
    )
    pin_workers: bool = Field(
        True,
        description="With several workers and reuse_port (on Linux), run each worker on its own share of the "
        "CPUs the server may use, so the scheduler neither moves its threads between cores nor stacks workers.",
    )
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    api_key: SecretStr | None = Field(
        None,
        description=f"X-API-Key for /admin/* (at least {MIN_API_KEY_LENGTH} characters); unset disables the admin API.",
    )
    protect_metrics_docs: bool = Field(
        False, description="Require the API key on /metrics, /docs, /redoc and /openapi.json too."
    )
    variant: VariantChoice = Field(
        "auto", description="Bundle variant; auto: int8 on CPU, fp16 on GPU when the bundle has it, else fp32."
    )
    ort_threads: int = Field(1, ge=0, description="ONNX Runtime intra-op threads (0 = one per core).")
    ort_spin: bool = Field(False, description="Let idle ONNX Runtime threads busy-wait (only with ort_threads > 1).")
    faiss_threads: int = Field(1, ge=1, description="FAISS OpenMP threads.")
    faiss_blas_queries: int = Field(
        8,
        ge=1,
        description="Batches of at least this many queries search a flat index by one BLAS matrix product, "
        "smaller ones vector by vector.",
    )
    length_groups: bool = Field(
        True,
        description="Encode a batch in groups of similar token length, each padded to its own longest (CPU, "
        "transformer bundles); false: one ONNX call padded to the batch's longest query.",
    )
    gil_switch_ms: float = Field(
        5.0,
        gt=0,
        description="Python's GIL switch interval: how long the event loop may hold the GIL while the "
        "inference thread waits for it after a native call.",
    )
    fast_path: bool = Field(
        True,
        description="Answer valid POST /search bodies in a plain-ASGI path (same model, batcher and response); "
        "false sends every request through the FastAPI route.",
    )
    max_batch_size: int = Field(32, ge=1, description="Most queries merged into one ONNX + FAISS call (1 = off).")
    max_wait_us: int = Field(0, ge=0, description="Longest a batch waits to fill once its first query is there.")
    max_queue: int = Field(256, ge=1, description="Queued queries above which requests get 429 + Retry-After.")
    queue_budget_ms: float = Field(
        10.0,
        gt=0,
        description="Refuse (429) a request when queued queries x the measured per-query time exceeds this wait.",
    )
    overload_interval_ms: float = Field(
        100.0,
        ge=0,
        description="How long the expected wait must stay over QUEUE_BUDGET_MS before requests are refused, "
        "and under it before refusing stops (0: at once): stalls shorter than this are waited out.",
    )
    max_hits_per_request: int = Field(10_000, ge=1, description="Most queries x k one request may ask for (more: 422).")
    stall_timeout_s: float = Field(
        5.0, gt=0, description="/readyz answers 503 while work waits and no batch has finished for this long."
    )
    lock_timeout_s: float = Field(
        1.0, ge=0, description="How long an admin reload/rollback waits for ROOT/.lock before answering 409."
    )
    request_timeout_s: float = Field(10.0, gt=0, description="A request still queued after this gets 503.")
    max_body_bytes: int = Field(65536, ge=1024, description="Bodies larger than this get 413.")
    max_batch_queries: int = Field(64, ge=1, description="Most queries in one POST /search/batch.")
    reload_poll_seconds: float = Field(2.0, ge=0, description="How often ROOT/current is checked (0 = never).")
    verify_checksums: bool = Field(True, description="sha256-check index and bundle files on load.")
    access_log: bool = Field(False, description="Log every request (uvicorn's access log).")
    log_level: LogLevel = Field("info", description="Log level of the service and of uvicorn.")

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_key")
    @classmethod
    def _key_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_API_KEY_LENGTH:
            raise ValueError(f"must be at least {MIN_API_KEY_LENGTH} characters (e.g. `openssl rand -hex 24`)")
        return value

    @model_validator(mode="after")
    def _queue_holds_a_batch_request(self) -> Self:
        if self.max_queue < self.max_batch_queries:
            raise ValueError(f"max_queue ({self.max_queue}) must be >= max_batch_queries ({self.max_batch_queries})")
        return self

    @model_validator(mode="after")
    def _milvus_needs_a_uri(self) -> Self:
        if self.backend == "milvus" and not self.milvus_uri:
            raise ValueError("backend milvus needs milvus_uri (SCALINGNOTE_MILVUS_URI: a .db file or http://host:port)")
        return self

    @model_validator(mode="after")
    def _protection_needs_a_key(self) -> Self:
        if self.protect_metrics_docs and self.api_key is None:
            raise ValueError("protect_metrics_docs needs an api_key")
        return self
