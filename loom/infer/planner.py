"""Plan sources for plan-then-render (Loom §3.2): who writes the plan P = {S_1 … S_N}.

- `ModelPlanner` (the default): the model writes the whole plan once, in its own words, from the scaffolded
  instruction; it is parsed with `loom.data.plan.parse_plan`. The public inference script generates a plan and
  then swaps in the ground-truth one (loom-reference-code §0.4); nothing here ever does that.
- `ExternalPlanner`: any OpenAI-compatible chat endpoint writes the plan and Loom only renders it — the paper's
  adapted-baseline setting and a Weaver-style planner / visualiser split.
- `FixedPlanner`: a plan given verbatim. For tests and controlled ablations only; result.json labels it.

A plan that yields no step at all is a `PlanError` (with the raw text in the message). Documented fallbacks,
accepted but recorded in result.json under `plan_problems` (and errors with `strict=True` / --strict-plan):
text without step markers but on several lines is read one step per line (`parse_plan`); text before step 1
is ignored; steps beyond N_max (or --steps) are dropped and listed under `plan_truncated`.
"""

from __future__ import annotations

import base64
import io
import os
import time
from dataclasses import dataclass, field

from PIL import Image

from ..data.plan import format_plan, parse_plan

PLAN_SOURCES = ("model", "external", "fixed")
FIXED_LABEL = "fixed (given verbatim; testing/ablation only, not written by any model)"
EXTERNAL_SYSTEM = ("You plan step-by-step visual tutorials. Answer with the plan only: one line per step, "
                   "'Step k: <what the image of this step shows>', nothing else.")


class PlanError(RuntimeError):
    """The planner produced no usable plan (or one with problems under `strict=True`)."""


@dataclass
class PlanResult:
    text: str  # the plan as written by the planner (raw)
    steps: list[str]  # parsed steps S_1..S_N (N ≤ n_max)
    source: str  # "model" | "external:<model>@<base_url>" | FIXED_LABEL
    problems: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # steps beyond the limit, dropped
    token_ids: list[int] | None = None  # model planner: generated ids (no start/end markers)
    seconds: float = 0.0
    hit_max_tokens: bool = False

    @property
    def canonical(self) -> str:
        return format_plan(self.steps)

    def to_json(self) -> dict:
        return {"plan_source": self.source, "plan_text": self.text, "plan_problems": list(self.problems),
                "plan_truncated": list(self.truncated), "plan_seconds": round(self.seconds, 4)}


def parse_or_raise(text: str, n_max: int, num_steps: int | None, source: str, strict: bool) -> PlanResult:
    """Parse planner output into a `PlanResult`; a requested step count caps the plan (extra steps dropped)."""
    limit = min(n_max, num_steps) if num_steps else n_max
    parsed = parse_plan(text, n_max=limit)
    res = PlanResult(text, parsed.steps, source, list(parsed.problems), list(parsed.truncated))
    if parsed.truncated:
        res.problems.append(f"plan had {len(parsed.steps) + len(parsed.truncated)} steps; kept the first {limit}")
    if num_steps and len(parsed.steps) < num_steps and parsed.steps:
        res.problems.append(f"asked for {num_steps} steps, the plan has {len(parsed.steps)}")
    if not res.steps or any(not s for s in res.steps):
        raise PlanError(f"the {source} planner wrote no usable plan ({'; '.join(res.problems) or 'no steps'}). "
                        f"Raw plan text:\n{text[:2000]!r}\nExpected lines of the form 'Step 1: …'. Try another "
                        "--seed, --plan-temperature 0, or --planner external / --plan-file.")
    if strict and res.problems:
        raise PlanError(f"plan problems under --strict-plan: {'; '.join(res.problems)}. Raw plan:\n{text[:2000]!r}")
    return res


class FixedPlanner:
    """A plan given verbatim (list of steps or plan text). Never the default; labelled in result.json."""

    name = "fixed"

    def __init__(self, plan: str | list[str]) -> None:
        self.text = format_plan(plan) if isinstance(plan, list) else plan

    def __call__(self, prompt: str, images: list[Image.Image], scaffold: str, n_max: int,
                 num_steps: int | None, strict: bool = False) -> PlanResult:
        return parse_or_raise(self.text, n_max, num_steps, FIXED_LABEL, strict)


def _data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class ExternalPlanner:
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, Ollama …) writes the plan.

    The user message is the same scaffolded instruction the model planner sees; reference images are sent as
    PNG data URLs. `api_key` defaults to $OPENAI_API_KEY (or "EMPTY" for local servers)."""

    name = "external"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, temperature: float = 0.3,
                 max_tokens: int = 1000, timeout: float = 120.0, retries: int = 2,
                 system_prompt: str = EXTERNAL_SYSTEM) -> None:
        self.base_url, self.model = base_url, model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.temperature, self.max_tokens, self.timeout, self.retries = temperature, max_tokens, timeout, retries
        self.system_prompt = system_prompt

    def messages(self, instruction: str, images: list[Image.Image]) -> list[dict]:
        content: list[dict] | str = instruction
        if images:
            content = [{"type": "text", "text": instruction}]
            content += [{"type": "image_url", "image_url": {"url": _data_url(im)}} for im in images]
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": content}]

    def __call__(self, prompt: str, images: list[Image.Image], scaffold: str, n_max: int,
                 num_steps: int | None, strict: bool = False) -> PlanResult:
        from openai import OpenAI

        client = OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout,
                        max_retries=self.retries)
        t0 = time.perf_counter()
        try:
            resp = client.chat.completions.create(model=self.model, messages=self.messages(scaffold, images),
                                                  temperature=self.temperature, max_tokens=self.max_tokens)
        except Exception as e:  # network / HTTP / auth errors: one clear message
            raise PlanError(f"external planner {self.model!r} at {self.base_url} failed: "
                            f"{type(e).__name__}: {e}") from e
        if not resp.choices or resp.choices[0].message is None or not resp.choices[0].message.content:
            raise PlanError(f"external planner {self.model!r} at {self.base_url} returned an empty answer")
        text = resp.choices[0].message.content
        res = parse_or_raise(text, n_max, num_steps, f"external:{self.model}@{self.base_url}", strict)
        res.seconds = time.perf_counter() - t0
        res.hit_max_tokens = getattr(resp.choices[0], "finish_reason", None) == "length"
        if res.hit_max_tokens:
            res.problems.append(f"external plan hit max_tokens={self.max_tokens} (last step may be cut)")
        return res
