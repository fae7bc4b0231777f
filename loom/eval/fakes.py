"""Offline stand-ins for dry runs and tests: a fake OpenAI-compatible judge on loopback, a tiny random CLIP,
and a fake tutorial generator. Nothing here touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

from loom.eval.benchmarks import BenchItem

# A handler gets the parsed request body and returns (HTTP status, reply text or error body dict, delay seconds).
Handler = Callable[[dict[str, Any]], tuple[int, Any, float]]


FAKE_JUDGE_MODEL = "fake-judge-2025-01-01"  # the model name the fake judge serves (and dry runs ask for)


def chat_reply(text: str, model: str = FAKE_JUDGE_MODEL) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }


def _digest(body: dict[str, Any]) -> int:
    return int(hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()[:8], 16)


def default_handler(body: dict[str, Any]) -> tuple[int, Any, float]:
    """Deterministic, plausible replies: rubric JSON for tutorial/painting prompts, {"score"} for OmniContext."""
    text = json.dumps(body["messages"])
    h = _digest(body)
    if "Rate from 0 to 10" in text:
        return 200, json.dumps({"score": h % 11, "reasoning": "fake"}), 0.0
    fields = (
        ("temporal_coherence", "reference_faithfulness", "semantic_alignment")
        if "reference_faithfulness" in text
        else ("temporal_coherence", "instruction_following", "narrative_consistency")
    )
    scores = {f: 1 + (h >> (3 * i)) % 5 for i, f in enumerate(fields)}
    return 200, json.dumps({**scores, "overall_score": round(sum(scores.values()) / 3, 1)}), 0.0


class FakeJudgeServer:
    """`with FakeJudgeServer(handler) as srv:` → srv.base_url; srv.requests holds every parsed request body."""

    def __init__(self, handler: Handler = default_handler) -> None:
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class _H(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(
                        {"path": self.path, "auth": self.headers.get("Authorization"), **body}
                    )
                status, payload, delay = outer.handler(body)
                if delay:
                    time.sleep(delay)
                data = json.dumps(chat_reply(payload) if status == 200 else payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away, which is what a timeout test wants

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeJudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- tiny CLIP ------------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte→unicode table, so a byte-level vocab covers any text without merges."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tiny_clip(seed: int = 0, image_size: int = 32) -> tuple[Any, Any]:
    """A random 2-layer CLIPModel + a byte-level CLIPTokenizer (514 tokens); quick_gelu like OpenAI's weights."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    sot, eot = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": sot, "<|endoftext|>": eot})
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(seed)
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
    )
    vision = dict(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_act="quick_gelu",
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval(), tok


# ---- fake generator ---------------------------------------------------------------------------------------------
def fake_tutorial_generator(
    num_steps: int = 4, size: int = 48
) -> Callable[[BenchItem, Path, int], dict[str, Any]]:
    """Writes flat-colour frames and a result.json in the `loom generate tutorial` format."""

    def generate(item: BenchItem, out_dir: Path, seed: int) -> dict[str, Any]:
        plan = [f"Step {k}: do part {k} of {item.prompt}" for k in range(1, num_steps + 1)]
        steps = []
        for k in range(1, num_steps + 1):
            h = hashlib.sha256(f"{item.item_id}:{seed}:{k}".encode()).digest()
            Image.new("RGB", (size, size), tuple(h[:3])).save(out_dir / f"frame_{k:02d}.png")
            steps.append({"index": k, "text": plan[k - 1], "image": f"frame_{k:02d}.png"})
        result = {"prompt": item.prompt, "plan": plan, "steps": steps}
        (out_dir / "result.json").write_text(json.dumps(result))
        return result

    return generate
