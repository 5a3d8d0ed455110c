"""Service settings from the environment (prefix ``VAE_``): ``create_app(settings)`` keeps them on ``app.state``."""

from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAE_", protected_namespaces=("settings_",))

    model_dir: Path = Field(
        Path("models"), description="the model repository: <name>/manifest.json, or <name>/<version>/manifest.json"
    )
    default_model: str = Field("fashion-mnist", description="model used when a request names none")
    model_control: Literal["none", "poll", "explicit"] = Field(
        "none",
        description=(
            "none: load at start (SIGHUP rescans); poll: also rescan every VAE_MODEL_POLL_S; "
            "explicit: change only through the repository API. Every mode loads what is there at start"
        ),
    )
    model_poll_s: float = Field(5.0, gt=0, description="seconds between rescans of VAE_MODEL_DIR in poll mode")
    admin_keys: str = Field(
        "", description="comma-separated keys for the repository API (load/unload); empty: that API answers 403"
    )
    providers: str = Field("auto", description="'auto' (CUDA if it works, then CPU) or a comma list of ORT providers")
    batching: bool = Field(
        True, description="coalesce concurrent requests into one ORT run (false: one request per run)"
    )
    max_batch_rows: int = Field(
        128,
        ge=1,
        description="rows per ORT run; larger requests run in chunks (CPU gains nothing past ~64; raise it on a GPU)",
    )
    max_concurrent_runs: int = Field(
        2, ge=1, description="ORT runs in flight per graph: a second one keeps another core busy on big batches"
    )
    max_delay_ms: float = Field(0.0, ge=0, description="wait up to this long for a batch to fill (0: greedy)")
    max_queue_rows: int = Field(
        262144,
        ge=1,
        description=(
            "rows waiting per batcher before requests get 503 "
            "(/elbo counts K × inputs; 256 requests of 64 images × K=16 fit; "
            "unset: at least VAE_MAX_REQUEST_ROWS and VAE_MAX_SAMPLE_ROWS)"
        ),
    )
    pad_batches: Literal["auto", "true", "false"] = Field(
        "auto", description="pad batches to power-of-two buckets (auto: on CUDA, where new shapes are costly)"
    )
    ort_intra_op_threads: int = Field(
        0,
        ge=0,
        description="ORT threads per run (0: ORT's default, one per core; idle threads sleep, they do not spin)",
    )
    ort_inter_op_threads: int = Field(1, ge=0, description="ORT inter-op threads per session")
    max_request_rows: int = Field(
        1024, ge=1, description="images / latents / n per request (unset: at most VAE_MAX_QUEUE_ROWS)"
    )
    max_samples: int = Field(1000, ge=1, description="samples (K) per request for /encode and /elbo")
    max_sample_rows: int = Field(
        262144,
        ge=1,
        description="samples × inputs per /encode or /elbo request (bounds memory; unset: at most VAE_MAX_QUEUE_ROWS)",
    )
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="request bodies above this get 413")
    request_timeout_ms: float = Field(
        30000,
        gt=0,
        description="deadline of a request still queued (504 after it); X-Timeout-Ms overrides it per request",
    )
    max_request_timeout_ms: float = Field(
        300000,
        gt=0,
        description=(
            "the most an X-Timeout-Ms header (or OIP parameters.timeout) may ask for "
            "(unset: at least VAE_REQUEST_TIMEOUT_MS)"
        ),
    )
    shutdown_grace_s: float = Field(
        30, ge=0, description="on SIGTERM: readiness 503 at once, then up to this long for accepted requests to finish"
    )
    api_keys: str = Field(
        "",
        description=(
            "comma-separated API keys for the inference routes (Authorization: Bearer or X-API-Key); empty: open"
        ),
    )
    cors_origins: str = Field(
        "", description="comma-separated origins allowed by CORS (* for any); empty: no CORS headers"
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object per line, with the request id"
    )
    access_log: bool = Field(False, description="one log line per request (method, path, status, duration, request id)")
    warmup: bool = Field(True, description="run every batch shape once before /health/ready turns 200")
    workers: int = Field(
        0,
        ge=0,
        description=(
            "processes serving the port, each a full replica (0: one per GPU on a CUDA host, else one per core)"
        ),
    )
    cuda_device: int = Field(0, ge=0, description="the GPU a process runs on (with workers: one each, in turn)")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="bind port")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="the Open Inference Protocol over gRPC on this port (Triton's); 0: off"
    )
    log_level: str = Field("info", description="logging level")

    @model_validator(mode="after")
    def _bounded_limits_agree(self) -> Settings:
        """A limit the user left unset follows the one it is bounded by; two values the user set that
        contradict each other are refused at start, in one line naming both."""
        given = set(self.model_fields_set)  # before any assignment below adds to it
        for bounded, bound, why in BOUNDED_BY:
            value, limit = getattr(self, bounded), getattr(self, bound)
            if value <= limit:
                continue
            if bounded not in given:
                setattr(self, bounded, limit)
            elif bound not in given:
                setattr(self, bound, value)
            else:
                raise ValueError(
                    f"VAE_{bounded.upper()} ({value:g}) is above VAE_{bound.upper()} ({limit:g}): {why}; "
                    f"lower the first or raise the second"
                )
        return self

    @cached_property  # read on every inference request: split once
    def api_key_list(self) -> list[str]:
        return comma_list(self.api_keys)

    @cached_property
    def admin_key_list(self) -> list[str]:
        return comma_list(self.admin_keys)

    @property
    def cors_origin_list(self) -> list[str]:
        return comma_list(self.cors_origins)

    @property
    def provider_list(self) -> list[str] | None:
        """None for automatic selection, else the providers in the order given."""
        if self.providers.strip().lower() == "auto":
            return None
        return comma_list(self.providers)


# (setting, the setting it may not exceed, why): the derived defaults and the one cross-field rule.
BOUNDED_BY = (
    ("max_request_rows", "max_queue_rows", "a request that large could never be queued"),
    ("max_sample_rows", "max_queue_rows", "a request that large could never be queued"),
    ("request_timeout_ms", "max_request_timeout_ms", "the default deadline would be over the cap"),
)


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: how every list-valued setting is written."""
    return [item.strip() for item in text.split(",") if item.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
