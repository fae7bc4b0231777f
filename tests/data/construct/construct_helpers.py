"""Helpers of the dataset-construction tests (imported by name: `conftest` is ambiguous across test folders)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

KEY_ENV = "LOOM_TEST_VLM_KEY"


def request_images(body: dict[str, Any]) -> list[Image.Image]:
    out = []
    for m in body["messages"]:
        if isinstance(m["content"], list):
            for p in m["content"]:
                if p["type"] == "image_url":
                    out.append(Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))))
    return out


def is_reask(body: dict[str, Any]) -> bool:
    return any(m["role"] == "assistant" for m in body["messages"])


def caption_json(n: int, name: str = "shapes") -> str:
    return json.dumps({"prompt": f"Create a tutorial for drawing the {name} picture.",
                       "steps": [f"Draw shape {k} of the {name} picture." for k in range(1, n + 1)]})


def endpoint_args(srv: Any, prefix: str, tmp: Path) -> list[str]:
    return [f"--{prefix}-base-url", srv.base_url, f"--{prefix}-model", f"fake-{prefix}", f"--{prefix}-api-key-env",
            KEY_ENV, f"--{prefix}-cache-dir", str(tmp / f"{prefix}-cache"), f"--{prefix}-backoff", "0.001",
            f"--{prefix}-jitter", "0.001", f"--{prefix}-max-attempts", "2", "--no-progress"]
