"""The construction stages' endpoints — captioning VLM (`--vlm-*`), image generation / edit (`--image-*`) — on the
client the judge uses (`loom.utils.openai_client`: same retries, Retry-After handling, malformed-reply handling,
disk cache, key from the environment only). One client per stage run, shared by its worker threads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loom.utils.openai_client import ApiClient, ApiConfig

_CLIENTS: dict[str, ApiClient] = {}


def add_endpoint_args(p, prefix: str, what: str, required: bool) -> None:
    g = p.add_argument_group(f"{what} endpoint (any OpenAI-compatible server)")
    g.add_argument(f"--{prefix}-base-url", help="e.g. http://127.0.0.1:8000/v1 (default: api.openai.com)")
    g.add_argument(f"--{prefix}-model", required=required, help="pinned model name, recorded in every row")
    g.add_argument(f"--{prefix}-api-key-env", default="OPENAI_API_KEY", help="env var that holds the key")
    g.add_argument(f"--{prefix}-timeout", type=float, default=120.0, help="seconds per request")
    g.add_argument(f"--{prefix}-max-attempts", type=int, default=6, help="attempts per request (429/5xx/malformed)")
    g.add_argument(f"--{prefix}-backoff", type=float, default=1.0, help="base seconds of the exponential backoff")
    g.add_argument(f"--{prefix}-jitter", type=float, default=1.0, help="random extra seconds added to every wait")
    g.add_argument(f"--{prefix}-cache-dir", type=Path,
                   default=Path(os.environ.get("LOOM_API_CACHE", Path.home() / ".cache" / "loom" / "api")),
                   help="reply cache (reruns never pay twice); env LOOM_API_CACHE")


def endpoint_config(args, prefix: str, **kw: Any) -> ApiConfig | None:
    p = prefix.replace("-", "_")
    model = getattr(args, f"{p}_model")
    if not model:
        return None
    return ApiConfig(model=model, base_url=getattr(args, f"{p}_base_url"), api_key_env=getattr(args, f"{p}_api_key_env"),
                     timeout_s=getattr(args, f"{p}_timeout"), max_attempts=getattr(args, f"{p}_max_attempts"),
                     backoff_base_s=getattr(args, f"{p}_backoff"), jitter_s=getattr(args, f"{p}_jitter"),
                     cache_dir=getattr(args, f"{p}_cache_dir"), **kw)


def open_client(name: str, cfg: ApiConfig) -> None:
    """Stage initialiser: build the client (EndpointError at once when the key is missing)."""
    _CLIENTS[name] = ApiClient(cfg)


def client(name: str) -> ApiClient:
    return _CLIENTS[name]


def settings(cfg: ApiConfig | None) -> dict[str, Any] | None:
    """What of an endpoint config decides the output (recorded in the stage settings)."""
    if cfg is None:
        return None
    return {"model": cfg.model, "base_url": cfg.base_url, "temperature": cfg.temperature}
