"""Shared fixtures: a loopback fake judge, fast-retry judge clients, and tiny run folders."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from loom.eval.fakes import FakeOpenAIServer, Handler
from loom.eval.judge import JudgeClient, JudgeConfig


@pytest.fixture(autouse=True)
def _judge_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_TEST_KEY", "sk-test-123")


@pytest.fixture
def judge_server() -> Iterator[Callable[[Handler], FakeOpenAIServer]]:
    servers: list[FakeOpenAIServer] = []

    def start(handler: Handler) -> FakeOpenAIServer:
        srv = FakeOpenAIServer(handler).__enter__()
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.__exit__(None, None, None)


def make_client(srv: FakeOpenAIServer, cache: Path | None = None, **kw: Any) -> JudgeClient:
    cfg = dict(
        model="gpt-4o-2024-08-06",
        base_url=srv.base_url,
        api_key_env="LOOM_TEST_KEY",
        cache_dir=cache,
        backoff_base_s=0.001,
        jitter_s=0.001,
        timeout_s=5.0,
        workers=4,
    )
    cfg.update(kw)
    return JudgeClient(JudgeConfig(**cfg))


def make_run(
    root: Path,
    items: dict[str, list[str]],
    *,
    prompt: str = "Create a tutorial for making {id}.",
    text_source: str = "model",
    reference: bool = False,
    size: int = 16,
) -> Path:
    """A run folder in the harness layout; step images are flat colours derived from (item, step)."""
    for n, (item_id, texts) in enumerate(items.items()):
        d = root / "items" / item_id
        d.mkdir(parents=True)
        steps = []
        for k, t in enumerate(texts, start=1):
            Image.new("RGB", (size, size), (20 * n, 30 * k, 100)).save(d / f"frame_{k:02d}.png")
            steps.append({"index": k, "text": t, "image": f"frame_{k:02d}.png"})
        res: dict[str, Any] = {
            "prompt": prompt.format(id=item_id),
            "plan": texts,
            "steps": steps,
            "item_id": item_id,
            "text_source": text_source,
        }
        if reference:
            (d / "inputs").mkdir()
            Image.new("RGB", (size, size), (255, 0, 0)).save(d / "inputs" / "input_01.png")
            res["inputs"] = ["inputs/input_01.png"]
        (d / "result.json").write_text(json.dumps(res))
    return root


def rubric_reply(
    tc: int,
    b: int,
    c: int,
    fields: tuple[str, str, str] = ("temporal_coherence", "instruction_following", "narrative_consistency"),
    overall: float | None = None,
) -> str:
    d: dict[str, Any] = dict(zip(fields, (tc, b, c)))
    d["overall_score"] = round((tc + b + c) / 3, 1) if overall is None else overall
    return json.dumps(d)


def user_text(body: dict[str, Any]) -> str:
    """All text parts of the request, for routing scripted replies by item."""
    out = []
    for m in body["messages"]:
        c = m["content"]
        out += [c] if isinstance(c, str) else [p["text"] for p in c if p["type"] == "text"]
    return "\n".join(out)
