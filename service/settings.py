"""Service settings, read from ``ABN_*`` environment variables (pydantic-settings).

Every setting the contract names exists here under exactly that name; ``abn serve`` options
(``--model``, ``--host``, ``--port``) override the environment. pydantic-settings reads only the
variables it knows and ignores the rest, so a misspelt name (``ABN_ABN_TORCH_THREADS``) would be
silently dropped: :func:`unknown_variables` finds them, and ``abn serve`` refuses to start.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from abn.store import DEFAULT_MODEL_DIR  # the shipped model; one default for CLI and service
from service.budget import BudgetSyntaxError, parse_budget_number


class Settings(BaseSettings):
    """What an operator can tune; defaults suit one CPU-bound process with a small model."""

    model_config = SettingsConfigDict(env_prefix="ABN_", extra="ignore", frozen=True)

    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="the model directory to serve")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when available, else CPU"
    )
    backend: Literal["auto", "float", "bitserial", "mixed"] = Field(
        "auto",
        description="how the switchable layers compute: float (quantization simulated in "
        "float32, every width costs the same time), bitserial (popcount kernels on the CPU "
        "whose time falls with BitOps; needs AVX-512 VPOPCNTDQ, refused without it), mixed "
        "(each layer's call on whichever of the two measured faster at start for its width "
        "and group size) or auto (mixed where the kernel can run, else float); "
        "docs/bitserial.md",
    )
    default_budget: float | None = Field(
        None,
        description="BitOps budget for requests without X-BitOps-Budget (same syntax as the "
        "header, e.g. 25M); unset means the most expensive configuration",
    )
    max_batch_size: int = Field(32, ge=1, le=4096, description="most requests in one batch")
    max_queue_delay_seconds: float = Field(
        0.005, ge=0.0, le=10.0, description="longest a request waits for a batch to fill"
    )
    batch_execution: Literal["auto", "inline", "thread"] = Field(
        "auto",
        description="where a batch runs: inline, on the event loop between its I/O turns (one "
        "thread per process, no lock handed between threads: best on a CPU, docs/operations.md); "
        "thread, in a model thread while the loop keeps answering (what a GPU needs); auto: "
        "inline on a CPU, thread on CUDA",
    )
    max_queue_size: int = Field(
        256, ge=1, description="requests waiting for a batch; beyond it, 429"
    )
    request_timeout_seconds: float = Field(
        10.0, gt=0.0, description="deadline from arrival; a request still queued past it gets 504"
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1,
        description="largest request body, whatever it holds (one image or several)",
    )
    max_images_per_request: int = Field(
        32,
        ge=1,
        le=4096,
        description="most images in one request (several multipart 'image' fields on "
        "/classify, the batch dimension of a v2 infer request); ABN_MAX_QUEUE_SIZE caps it too",
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="largest image, in pixels, and largest square it is padded to (max side^2)",
    )
    api_key: SecretStr | None = Field(
        None, description="when set, /classify and /feedback need 'Authorization: Bearer <key>'"
    )
    host: str = Field(
        "127.0.0.1",
        description="bind address; 127.0.0.1 unless told otherwise (the container image sets "
        "0.0.0.0)",
    )
    port: int = Field(8000, ge=0, le=65535, description="bind port")
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="serving processes on the one port, each with its own model copy and "
        "batcher (or, with ABN_MODEL_PROCESS=shared, front ends of one model process); unset: "
        "one per CPU core this process may use on CPU (measured best on the 2-core machine, "
        "docs/operations.md), 1 on CUDA unless shared. Set it to the CPU limit in a container",
    )
    model_process: Literal["per-worker", "shared"] = Field(
        "per-worker",
        description="per-worker: every worker loads its own model copy and batcher (right on "
        "CPU); shared: one more process owns the only copy and its batcher, and the workers "
        "are front ends (HTTP, decoding, validation) handing it each job over a Unix socket "
        "(one copy on a GPU; docs/operations.md, Scale)",
    )
    feedback_key: SecretStr | None = Field(
        None,
        description="HMAC key that signs generated request ids (which carry their prediction, "
        "so /feedback works on any process or replica holding the same key); unset: a random "
        "key per server start, shared by its workers only",
    )
    feedback_capacity: int = Field(
        100_000, ge=1, description="recent request ids remembered for POST /feedback"
    )
    feedback_ttl_seconds: float = Field(
        3600.0, gt=0.0, description="how long a request id stays open to feedback"
    )
    shutdown_delay_seconds: float = Field(
        0.0,
        ge=0.0,
        le=300.0,
        description="after SIGTERM, keep listening this long (readiness 503, new requests 503) "
        "before closing the port, so load balancers see the 503 and stop routing here",
    )
    shutdown_timeout_seconds: float = Field(
        30.0, gt=0.0, description="graceful-shutdown grace for in-flight requests after SIGTERM"
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="torch intra-op threads for CPU inference; unset: torch's default (one per "
        "core). 1 suits small models and CPUs shared with other work",
    )
    body_timeout_seconds: float = Field(
        5.0,
        gt=0.0,
        le=3600.0,
        description="a request body must have fully arrived this long after its headers (plus "
        "up to 10 % drawn per request); otherwise 408 and the connection is closed (slow "
        "uploads cannot hold the server)",
    )
    header_timeout_seconds: float = Field(
        5.0,
        gt=0.0,
        le=3600.0,
        description="a new connection must deliver its request headers within this time; "
        "otherwise it is closed (408 when part of a request had arrived)",
    )
    limit_concurrency: int = Field(
        2048,
        ge=1,
        le=1_000_000,
        description="most open connections, and most requests in flight; a request beyond "
        "either is answered 503 at once and its connection closed. Keep it below the open-file "
        "limit (ulimit -n)",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: one human-readable line per record; json: one JSON object per line "
        "with fixed keys, for log collectors (docs/api.md, Logs)",
    )
    access_log: bool = Field(
        True, description="one INFO line per request (service.access); false drops them"
    )
    deprecated_metrics: bool = Field(
        True,
        description="also export the metric names deprecated in this release "
        "(abn_layer_bits_total, in the contract until the next release); false drops them, and "
        "/metrics then passes promtool check metrics",
    )

    @field_validator("default_budget", mode="before")
    @classmethod
    def _parse_budget(cls, value: object) -> float | None:
        """Accept the header's syntax (``25M``, ``2.5e7``) so one rule serves both."""
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value) or value <= 0:
                raise ValueError("ABN_DEFAULT_BUDGET must be a positive finite number")
            return float(value)
        try:
            return parse_budget_number(str(value))
        except BudgetSyntaxError as err:
            raise ValueError(f"ABN_DEFAULT_BUDGET: {err}") from err

    @field_validator("api_key", "feedback_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        """``ABN_API_KEY=`` (empty) means no key, not a key that is the empty string."""
        if value is None or (isinstance(value, str) and value == ""):
            return None
        return value


# ABN_* variables that are not service settings: read by the model library (abn/data.py) or
# used by compose.yaml for its own substitutions. Not errors when present.
OTHER_ABN_VARIABLES = frozenset(
    {
        "ABN_FASHION_MNIST_DIR",
        "ABN_HOST_PORT",
        "ABN_GPU_HOST_PORT",
        "ABN_BIND_ADDRESS",
        "ABN_MODEL_STORE",
        "ABN_MODEL_NAME",
    }
)


def setting_variables() -> list[str]:
    """Every ``ABN_*`` name a setting is read from."""
    return sorted(f"ABN_{name.upper()}" for name in Settings.model_fields)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``ABN_*`` names in ``environ`` that no setting reads, each with a did-you-mean hint.

    pydantic-settings ignores such names whatever ``extra`` says (it only looks up the fields
    it has), so a typo would leave the default in force without a word."""
    known = setting_variables()
    problems = []
    for name in sorted(environ):
        if not name.upper().startswith("ABN_") or name.upper() in OTHER_ABN_VARIABLES:
            continue
        if name.upper() in known:
            continue
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
        problems.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return problems


def runs_inline(setting: str, device_type: str) -> bool:
    """Whether ``ABN_BATCH_EXECUTION`` puts the batches on the event loop, on a device of this
    type (``torch.device.type``)."""
    return setting == "inline" or (setting == "auto" and device_type != "cuda")
