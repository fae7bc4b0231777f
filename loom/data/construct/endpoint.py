"""The construction stages' endpoints — captioning VLM (`--vlm-*`), image generation / edit (`--image-*`) — on the
client the judge uses (`loom.utils.openai_client`: same retries, Retry-After handling, malformed-reply handling,
disk cache, key from the environment only). One client per stage run, shared by its worker threads."""

from __future__ import annotations

from typing import Any

from loom.utils.openai_client import ApiClient, ApiConfig

_CLIENTS: dict[str, ApiClient] = {}


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
    """What of an endpoint config decides the output (recorded in the stage settings; the host does not)."""
    if cfg is None:
        return None
    return {"model": cfg.model, "temperature": cfg.temperature}
