"""What a person sees while a generation runs (all on stderr, so stdout keeps only results): the plan streamed
token by token while the model writes it, then the parsed plan, then one progress bar per frame.

The plan stream is transformers' `TextStreamer` (word-boundary buffering, UTF-8 safe decoding) pointed at
stderr; `Engine.generate_text(streamer=…)` feeds it every token as it is decoded."""

from __future__ import annotations

import sys
from collections.abc import Callable


def plan_streamer(tokenizer, stream=None):
    """A `transformers.TextStreamer` writing the decoded plan to `stream` (default stderr) as it is written."""
    from transformers import TextStreamer

    class _PlanStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out = stream or sys.stderr
            out.write(text.replace("\ufffd", "") + ("\n" if stream_end else ""))
            out.flush()

    s = _PlanStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
    (stream or sys.stderr).write("[loom] writing the plan: ")
    return s


def print_plan(steps: list[str], problems: list[str], stream=None) -> None:
    out = stream or sys.stderr
    out.write(f"[loom] plan ({len(steps)} step{'s' if len(steps) != 1 else ''}):\n")
    for k, text in enumerate(steps, 1):
        out.write(f"  Step {k}: {text}\n")
    for p in problems:
        out.write(f"  note: {p}\n")
    out.flush()


def frame_progress(sampler_steps: int, label: str) -> Callable:
    """`on_frame_start(t, n, history)` for the render loops: one tqdm bar per frame over its denoising steps."""
    from tqdm.auto import tqdm

    def start(t: int, n: int, hist: list[int]):
        bar = tqdm(total=sampler_steps - 1, desc=f"{label} {t}/{n}", unit="step", leave=True)

        def cb(i: int, total: int) -> None:
            bar.update(1)
            if i == total:
                bar.close()
        return cb
    return start
