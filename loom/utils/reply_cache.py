"""On-disk cache of endpoint replies (judge, captioning VLM, image endpoints): one JSON file per call, so a rerun
never pays twice.

The key hashes everything that can change the reply: model, the full request (prompt text and the image bytes,
which sit inside the messages as base64 data URLs or are hashed by the caller), sampling settings, and the repeat
index (at temperature 0 the three judge repeats are identical requests; only the key tells them apart). Only
well-formed replies are stored: a failed or malformed call is retried by the next run instead of replayed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loom.utils.io import atomic_write_json


def cache_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any], repeat: int | str) -> str:
    payload = json.dumps(
        {"model": model, "messages": messages, "params": params, "repeat": repeat},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class CachedReply:
    text: str
    model_served: str
    prompt_tokens: int
    completion_tokens: int
    created: float


class ReplyCache:
    """Files live at `<root>/<key[:2]>/<key>.json`; the two-level layout keeps directories small."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> CachedReply | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return CachedReply(
                d["text"], d["model_served"], d["prompt_tokens"], d["completion_tokens"], d["created"]
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            return None  # a corrupt entry is treated as a miss and overwritten on the next call

    def put(self, key: str, reply: CachedReply, request_model: str) -> None:
        atomic_write_json(
            self._path(key),
            {
                "key": key,
                "model_requested": request_model,
                "model_served": reply.model_served,
                "text": reply.text,
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "created": reply.created,
                "created_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reply.created)),
            },
        )
