"""Offline stand-ins for dry runs and tests: a fake OpenAI-compatible server on loopback (chat completions for the
judge and the captioning VLM, image generations and edits for dataset construction), a tiny random CLIP, and a fake
tutorial generator. Nothing here touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from loom.eval.benchmarks import BenchItem

# A handler gets the parsed request and returns (HTTP status, payload, delay seconds[, extra headers]).
# Chat payloads: a str with status 200 is the assistant's text; a dict/list is sent verbatim as the JSON body (error
# bodies, or malformed 200 replies such as {"choices": []}); a RawReply is sent byte for byte (HTML, truncated JSON).
# Image payloads (requests to /images/*): PNG bytes with status 200 are wrapped as {"data": [{"b64_json": …}]}.
Handler = Callable[[dict[str, Any]], tuple]


@dataclass
class RawReply:
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


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
    """Deterministic, plausible replies: caption JSON for `loom data caption` (one step per image sent), rubric
    JSON for tutorial/painting prompts, {"score"} for OmniContext."""
    text = json.dumps(body["messages"])
    h = _digest(body)
    if "frames of one tutorial" in text:
        n = sum(1 for m in body["messages"] if isinstance(m["content"], list)
                for p in m["content"] if p.get("type") == "image_url")
        steps = [f"Do part {k} of the work (variant {h % 97})." for k in range(1, n + 1)]
        return 200, json.dumps({"prompt": f"Create a tutorial for making item {h % 997}.", "steps": steps}), 0.0
    if "Rate from 0 to 10" in text:
        return 200, json.dumps({"score": h % 11, "reasoning": "fake"}), 0.0
    fields = (
        ("temporal_coherence", "reference_faithfulness", "semantic_alignment")
        if "reference_faithfulness" in text
        else ("temporal_coherence", "instruction_following", "narrative_consistency")
    )
    scores = {f: 1 + (h >> (3 * i)) % 5 for i, f in enumerate(fields)}
    return 200, json.dumps({**scores, "overall_score": round(sum(scores.values()) / 3, 1)}), 0.0


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def default_image_handler(req: dict[str, Any]) -> tuple[int, Any, float]:
    """Generations: a flat colour from the prompt hash. Edits of one image: its transposed greyscale version (a
    stand-in for de-stylization that a perceptual hash sees as a change). Edits of several images: them side by
    side (a stand-in composite)."""
    if req["path"].endswith("/generations"):
        h = hashlib.sha256(req["prompt"].encode()).digest()
        return 200, png_bytes(Image.new("RGB", (32, 32), tuple(h[:3]))), 0.0
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in req["images"]]
    if len(images) == 1:
        return 200, png_bytes(ImageOps.grayscale(images[0].transpose(Image.Transpose.TRANSPOSE)).convert("RGB")), 0.0
    height = max(im.height for im in images)
    canvas = Image.new("RGB", (sum(im.width for im in images), height), (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width
    return 200, png_bytes(canvas), 0.0


def _parse_multipart(content_type: str, data: bytes) -> dict[str, Any]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data
    )
    out: dict[str, Any] = {"images": []}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if part.get_filename():
            out["images"].append(payload)
        elif name:
            out[name] = payload.decode("utf-8")
    return out


class FakeOpenAIServer:
    """`with FakeOpenAIServer(handler) as srv:` → srv.base_url; srv.requests holds every parsed request."""

    def __init__(self, handler: Handler = default_handler, image_handler: Handler = default_image_handler) -> None:
        self.handler = handler
        self.image_handler = image_handler
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class _H(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                data = self.rfile.read(int(self.headers["Content-Length"]))
                ctype = self.headers.get("Content-Type", "")
                body = _parse_multipart(ctype, data) if ctype.startswith("multipart/") else json.loads(data)
                req = {"path": self.path, "auth": self.headers.get("Authorization"), **body}
                with outer.lock:
                    outer.requests.append(req)
                is_image = "/images/" in self.path
                status, payload, delay, *extra = (outer.image_handler if is_image else outer.handler)(req)
                headers = dict(extra[0]) if extra else {}
                if delay:
                    time.sleep(delay)
                content_type = "application/json"
                if isinstance(payload, RawReply):
                    data, content_type = payload.body, payload.content_type
                    headers.update(payload.headers)
                elif is_image and status == 200 and isinstance(payload, bytes):
                    b64 = base64.b64encode(payload).decode("ascii")
                    data = json.dumps({"created": int(time.time()), "data": [{"b64_json": b64}]}).encode()
                elif status == 200 and isinstance(payload, str):
                    data = json.dumps(chat_reply(payload)).encode()
                else:
                    data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
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

    def __enter__(self) -> FakeOpenAIServer:
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
