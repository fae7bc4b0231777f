"""Fixtures of the dataset-construction tests: a fake VLM / image endpoint on 127.0.0.1, a tiny local CLIP."""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
pytest.importorskip("av")  # the `data` extra (pip install 'loom[data]'), installed by `make test`
pytest.importorskip("imagehash")

from loom.eval.fakes import FakeOpenAIServer  # noqa: E402

KEY_ENV = "LOOM_TEST_VLM_KEY"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeOpenAIServer]]:
    servers: list[FakeOpenAIServer] = []

    def start(handler=None, image_handler=None) -> FakeOpenAIServer:
        kw = {k: v for k, v in (("handler", handler), ("image_handler", image_handler)) if v is not None}
        srv = FakeOpenAIServer(**kw).__enter__()
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.__exit__(None, None, None)


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


def endpoint_args(srv: FakeOpenAIServer, prefix: str, tmp: Path) -> list[str]:
    return [f"--{prefix}-base-url", srv.base_url, f"--{prefix}-model", f"fake-{prefix}", f"--{prefix}-api-key-env",
            KEY_ENV, f"--{prefix}-cache-dir", str(tmp / f"{prefix}-cache"), f"--{prefix}-backoff", "0.001",
            f"--{prefix}-jitter", "0.001", f"--{prefix}-max-attempts", "2", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from loom.eval.fakes import build_tiny_clip

    out = tmp_path_factory.mktemp("tiny-clip")
    model, tok = build_tiny_clip()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
