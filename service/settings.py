"""Service settings: environment variables prefixed ``SCALINGNOTE_`` and an optional ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of ``scalingnote serve``; CLI options override the environment."""

    model_config = SettingsConfigDict(env_prefix="SCALINGNOTE_", env_file=".env", extra="ignore")

    bundle: Path | None = Field(None, description="Model bundle directory (ONNX query encoder).")
    index_root: Path | None = Field(
        None, description="Index root (ROOT/versions/<id> + ROOT/current) or a plain, static index directory."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(None, description="X-API-Key for /admin/*; unset disables the admin API.")
    variant: str = Field("auto", description="Bundle variant: auto (int8 on CPU, fp16 on GPU, if present), fp32 …")
    ort_threads: int = Field(1, ge=0, description="ONNX Runtime intra-op threads (0 = one per core).")
    ort_spin: bool = Field(False, description="Let idle ONNX Runtime threads busy-wait (only with ort_threads > 1).")
    faiss_threads: int = Field(1, ge=1, description="FAISS OpenMP threads.")
    gil_switch_ms: float = Field(
        5.0,
        gt=0,
        description="Python's GIL switch interval: how long the event loop may hold the GIL while the "
        "inference thread waits for it after a native call.",
    )
    max_batch_size: int = Field(4, ge=1, description="Most queries merged into one ONNX + FAISS call (1 = off).")
    max_wait_us: int = Field(0, ge=0, description="Longest a batch waits to fill once its first query is there.")
    max_queue: int = Field(256, ge=1, description="Queued queries above which requests get 429 + Retry-After.")
    request_timeout_s: float = Field(10.0, gt=0, description="A request still queued after this gets 503.")
    max_body_bytes: int = Field(65536, ge=1024, description="Bodies larger than this get 413.")
    max_batch_queries: int = Field(64, ge=1, description="Most queries in one POST /search/batch.")
    reload_poll_seconds: float = Field(2.0, ge=0, description="How often ROOT/current is checked (0 = never).")
    verify_checksums: bool = Field(True, description="sha256-check index and bundle files on load.")
    access_log: bool = False
    log_level: str = "info"

    @model_validator(mode="after")
    def _queue_holds_a_batch_request(self) -> Self:
        if self.max_queue < self.max_batch_queries:
            raise ValueError(f"max_queue ({self.max_queue}) must be >= max_batch_queries ({self.max_batch_queries})")
        return self
