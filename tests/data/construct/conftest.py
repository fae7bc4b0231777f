"""Fixtures of the dataset-construction tests: a fake VLM / image endpoint on 127.0.0.1, a tiny local CLIP."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytest.importorskip("av")  # the `data` extra (pip install 'loom[data]'), installed by `make test`
pytest.importorskip("imagehash")

from construct_helpers import KEY_ENV  # noqa: E402

from loom.eval.fakes import FakeOpenAIServer  # noqa: E402


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


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from loom.eval.fakes import build_tiny_clip

    out = tmp_path_factory.mktemp("tiny-clip")
    model, tok = build_tiny_clip()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
