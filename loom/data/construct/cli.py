"""Argument parsers of the `loom data` construction stages. Only argparse here: each stage module (and its heavy
imports — PyAV, torch, openai) is loaded when its command runs, so `loom data --help` stays instant."""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Any

from .hashing import CUT_DISTANCE, DUP_DISTANCE  # numpy + PIL only


def _runner(module: str):
    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(f"loom.data.construct.{module}").run(args)

    return run


def add_run_args(p) -> None:
    g = p.add_argument_group("running")
    g.add_argument("--workers", type=int, default=1, help="parallel worker processes (threads for endpoint calls)")
    g.add_argument("--shard", default="0/1", help="K/N: this run takes items K, K+N, K+2N, … (0-based)")
    g.add_argument("--restart", action="store_true", help="discard the journal of an earlier run and start over")
    g.add_argument("--max-errors", type=int, default=20, help="stop past this many unexpected per-item errors")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_endpoint_args(p, prefix: str, what: str, required: bool) -> None:
    g = p.add_argument_group(f"{what} endpoint (any OpenAI-compatible server)")
    g.add_argument(f"--{prefix}-base-url", help="e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL or "
                   "api.openai.com)")
    g.add_argument(f"--{prefix}-model", required=required, help="pinned model name, recorded in every row")
    g.add_argument(f"--{prefix}-api-key-env", default="OPENAI_API_KEY", help="env var that holds the key")
    g.add_argument(f"--{prefix}-timeout", type=float, default=120.0, help="seconds per request")
    g.add_argument(f"--{prefix}-max-attempts", type=int, default=6, help="attempts per request (429/5xx/malformed)")
    g.add_argument(f"--{prefix}-backoff", type=float, default=1.0, help="base seconds of the exponential backoff")
    g.add_argument(f"--{prefix}-jitter", type=float, default=1.0, help="random extra seconds added to every wait")
    g.add_argument(f"--{prefix}-cache-dir", type=Path,
                   default=Path(os.environ.get("LOOM_API_CACHE", Path.home() / ".cache" / "loom" / "api")),
                   help="reply cache (reruns never pay twice); env LOOM_API_CACHE")


def add_parsers(sub: Any) -> None:
    for add in (_frames, _caption, _filter, _compose, _destylize):
        add(sub)


def _frames(sub) -> None:
    p = sub.add_parser("frames", help="sample 4-6 distinct frames per video / image folder / blog page")
    p.add_argument("inputs", nargs="+", help="video files, folders (scanned recursively), .html/.md pages")
    p.add_argument("--out", type=Path, required=True, help="output folder: frames.jsonl, frames/, funnel report")
    p.add_argument("--num-frames", default="4-6", help="MIN-MAX distinct frames per source (default 4-6)")
    p.add_argument("--max-candidates", type=int, default=240, help="candidate frames examined per source")
    p.add_argument("--black-level", type=float, default=16.0, help="mean luminance (0-255) at or below: black")
    p.add_argument("--blank-std", type=float, default=4.0, help="luminance std at or below: a blank frame")
    p.add_argument("--fade-delta", type=float, default=2.0,
                   help="mean-luminance change against both neighbouring frames at or above: a fade")
    p.add_argument("--dup-distance", type=int, default=DUP_DISTANCE,
                   help="pHash bits (of 256) at or below: a near-duplicate")
    p.add_argument("--max-side", type=int, default=1024, help="long side of the written frames (px)")
    add_run_args(p)
    p.set_defaults(fn=_runner("frames"))


def _caption(sub) -> None:
    p = sub.add_parser("caption", help="VLM writes the prompt and one caption per frame (frames.jsonl → manifest)")
    p.add_argument("manifest", type=Path, help="frames.jsonl from `loom data frames` (or a tutorial manifest)")
    p.add_argument("--out", type=Path, required=True, help="output manifest (.jsonl)")
    p.add_argument("--recaption", action="store_true", help="refine existing plans instead of writing new ones")
    p.add_argument("--max-side", type=int, default=768, help="frames are sent at this long side (px)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=1500)
    p.add_argument("--no-json-mode", action="store_true", help="omit response_format (servers without JSON mode)")
    add_endpoint_args(p, "vlm", "captioning VLM", required=True)
    add_run_args(p)
    p.set_defaults(fn=_runner("caption"))


def _filter(sub) -> None:
    p = sub.add_parser("filter", help="quality filters + near-duplicate and held-out overlap removal, with a funnel")
    p.add_argument("manifests", nargs="+", type=Path, help="JSONL manifests (captioned tutorials, converters' output)")
    p.add_argument("--out", type=Path, required=True, help="filtered manifest (.jsonl); report next to it")
    p.add_argument("--min-steps", type=int, default=3, help="tutorials need at least this many steps (paper: 3)")
    p.add_argument("--dup-distance", type=int, default=DUP_DISTANCE, help="pHash bits (of 256): near-identical")
    p.add_argument("--cut-distance", type=int, default=CUT_DISTANCE, help="pHash bits (of 256): a scene cut")
    p.add_argument("--clip-threshold", type=float, default=None,
                   help="minimum step text–image cosine (ViT-L/14: try 0.2); no CLIP filter when omitted")
    p.add_argument("--clip-backend", default="transformers", choices=("transformers", "open_clip"))
    p.add_argument("--clip-weights", help="CLIP folder or hub name (default openai/clip-vit-large-patch14)")
    p.add_argument("--held-out", action="append", default=[], metavar="PATH",
                   help="eval manifest or image folder that must not overlap the training data (repeatable)")
    add_run_args(p)
    p.set_defaults(fn=_runner("filter"))


def _compose(sub) -> None:
    p = sub.add_parser("compose-pairs", help="subject images → compose + decompose rows with entity tokens")
    p.add_argument("subjects", type=Path, help="folder of <category>/<image> isolated subjects (+ <image>.txt)")
    p.add_argument("--out", type=Path, required=True, help="output manifest (.jsonl); composites/ next to it")
    p.add_argument("--num-entities", default="2-3", help="K or MIN-MAX categories per combination")
    p.add_argument("--max-combos", type=int, default=1000, help="at most this many combinations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--entity", action="append", default=[], metavar="CATEGORY=<token>",
                   help="entity token of a category folder, e.g. --entity shoes=<object>")
    p.add_argument("--dup-distance", type=int, default=DUP_DISTANCE, help="pHash bits: near-identical subjects")
    p.add_argument("--no-reverse", action="store_true", help="only forward (compose) rows")
    p.add_argument("--size", help="composite size for the endpoint, e.g. 1024x1024")
    add_endpoint_args(p, "image", "image-edit (composite; optional: a collage without it)", required=False)
    add_run_args(p)
    p.set_defaults(fn=_runner("compose"))


def _destylize(sub) -> None:
    p = sub.add_parser("destylize", help="stylised references → (style, content, output) rows via an image-edit API")
    p.add_argument("styles", type=Path, help="folder of <style>/<image> stylised references (+ <image>.txt)")
    p.add_argument("--out", type=Path, required=True, help="output manifest (.jsonl); content/ next to it")
    p.add_argument("--dup-distance", type=int, default=DUP_DISTANCE,
                   help="pHash bits: a de-stylised image this close to its reference is unchanged")
    p.add_argument("--size", help="output size for the endpoint, e.g. 1024x1024")
    add_endpoint_args(p, "image", "image-edit (de-stylization)", required=True)
    add_run_args(p)
    p.set_defaults(fn=_runner("destylize"))
