"""`loom data caption`: a VLM on any OpenAI-compatible endpoint writes the generation prompt and one step caption
per frame (paper Fig. 3a: "captioned by GPT-4o with generation prompts and stepwise captions"). `--recaption`
refines the captions of existing tutorials for causal consistency instead (§3.4: MakeAnything captions refined by
GPT-4o).

Each reply must be one JSON object matching `CaptionReply` (pydantic) with exactly one step per frame, every step
one line without a "Step k:" marker (the same rules `loom data validate` applies, `records.tutorial_steps`); an
unusable reply is re-asked once. Outcomes: a tutorial row; or a named rejection — `vlm_reply_not_json`,
`vlm_wrong_step_count`, `vlm_reply_invalid` (twice unusable), `vlm_refused` (HTTP 400/413/422 for this item); or
*pending* `vlm_unavailable` when the endpoint kept failing (429/5xx/timeouts/malformed bodies after every retry):
reported, not cached, retried by the next run. A row that already has a prompt keeps it (the painting converter
writes the evaluation prompt); the VLM's prompt is then kept in `meta.caption.vlm_prompt`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loom.utils.openai_client import ApiConfig, EndpointError

from ..records import tutorial_steps
from . import endpoint
from .stage import Outcome, Stage, file_digest

STEPS = ("no_frames", "unreadable_image", "no_plan", "vlm_refused", "vlm_reply_not_json", "vlm_wrong_step_count",
         "vlm_reply_invalid")


class CaptionReply(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=3, description="the instruction a user would type to get this tutorial")
    steps: list[str] = Field(description="one caption per frame, in order: the action that produces that frame")


SYSTEM = """\
You write training data for a model that generates step-by-step visual tutorials (a plan, then one image per step).
You are shown the {n} frames of one tutorial, in order.
- "prompt": the instruction a user would give to obtain this whole tutorial, e.g. "Create a tutorial for making \
tomato egg stir-fry." — one sentence, no step list.
- "steps": exactly {n} strings, one per frame in order. Step k describes the action whose result is frame k, in \
the imperative ("Chop the onion into thin slices."), one sentence, no "Step k:" prefix, no line breaks. Every step \
must follow causally from the previous one and describe only what is visible in its frame.
Reply with ONLY a JSON object (no markdown) matching this JSON schema:
{schema}"""

RECAPTION = """\
The tutorial already has captions, which may not match the frames or may not follow from each other. Rewrite them: \
keep what is correct, fix what the frame does not show, and make each step the causal consequence of the previous \
one (paper: refined "for causal consistency"). Existing captions:
{captions}"""


def build_messages(n: int, frames: list[Path], context: dict[str, Any], existing: list[str] | None,
                   max_side: int) -> list[dict[str, Any]]:
    from loom.eval.images import judge_image_url  # the judge's image encoding: long side ≤ max_side, PNG

    system = SYSTEM.format(n=n, schema=json.dumps(CaptionReply.model_json_schema()))
    if existing is not None:
        system += "\n" + RECAPTION.format(captions="\n".join(f"Step {k}: {s}" for k, s in enumerate(existing, 1)))
    intro = f"A tutorial with {n} frames."
    if context.get("title"):
        intro += f" Source title: {context['title']}."
    content: list[dict[str, Any]] = [{"type": "text", "text": intro}]
    texts = context.get("context") or [""] * n
    for k, (path, text) in enumerate(zip(frames, texts), start=1):
        label = f"Frame {k}:" + (f" (text near it in the source: {text[:300]})" if text else "")
        content += [{"type": "text", "text": label},
                    {"type": "image_url", "image_url": {"url": judge_image_url(path, max_side)}}]
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def validator(n: int):
    def validate(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        try:
            reply = CaptionReply.model_validate(obj)
        except ValidationError as e:
            err = e.errors()[0]
            return None, f"schema: field {'.'.join(map(str, err['loc']))}: {err['msg']}"
        if len(reply.steps) != n:
            return None, f"wrong number of steps: {len(reply.steps)} given, {n} expected (one per frame)"
        from loom.eval.clip_score import strip_step_label  # "Step 2: Cut" → "Cut" (a label is not content)

        steps = [" ".join(strip_step_label(s).split()) for s in reply.steps]
        _, problems = tutorial_steps({"plan": steps})
        if problems:
            return None, f"steps: {problems[0]}"
        return {"prompt": " ".join(reply.prompt.split()), "steps": steps}, None

    return validate


def process_row(cfg: dict[str, Any], item: dict[str, Any]) -> Outcome:
    row, base, out_base = item["row"], Path(item["base"]), Path(item["out_base"])
    frames = row.get("frames") or []
    if not frames or not all(isinstance(f, str) for f in frames):
        return Outcome.reject("no_frames", "the row has no frame paths")
    paths = [base / f for f in frames]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return Outcome.reject("unreadable_image", f"missing {missing[0]}")
    existing = None
    if cfg["recaption"]:
        existing, problems = tutorial_steps(row)
        if not existing or problems:
            return Outcome.reject("no_plan", problems[0] if problems else "--recaption needs rows with a plan")
    messages = build_messages(len(paths), paths, row.get("meta") or {}, existing, cfg["max_side"])
    try:
        out = endpoint.client("vlm").ask_json(messages, validator(len(paths)))
    except OSError as e:
        return Outcome.reject("unreadable_image", str(e))
    if not out.valid:
        last = out.replies[-1][:120] if out.replies else ""
        if out.failure in ("transport", "malformed"):
            return Outcome.retry_later("vlm_unavailable", out.error or "")
        if out.failure == "refused":
            return Outcome.reject("vlm_refused", out.error or "")
        if out.failure == "not_json":
            return Outcome.reject("vlm_reply_not_json", f"reply {last!r}")
        step_count = "wrong number of steps" in (out.error or "")
        return Outcome.reject("vlm_wrong_step_count" if step_count else "vlm_reply_invalid", out.error or "")
    parsed = out.parsed or {}
    keep_prompt = isinstance(row.get("prompt"), str) and row["prompt"].strip()
    meta = dict(row.get("meta") or {})
    meta["caption"] = {"model": cfg["model"], "model_served": out.model_served, "reasked": out.reasked,
                       "mode": "recaption" if cfg["recaption"] else "caption"}
    if keep_prompt:
        meta["caption"]["vlm_prompt"] = parsed["prompt"]
    if existing is not None:
        meta["caption"]["previous_plan"] = existing
    rel = lambda p: os.path.relpath(base / p, out_base)  # noqa: E731
    new = {**{k: v for k, v in row.items() if not k.startswith("_")}, "task": "tutorial",
           "prompt": row["prompt"] if keep_prompt else parsed["prompt"], "plan": parsed["steps"],
           "frames": [rel(f) for f in frames],
           "input_images": [rel(f) for f in row.get("input_images") or [] if isinstance(f, str)], "meta": meta}
    return Outcome.keep([new], reasked=int(out.reasked))


def run(args) -> int:
    from ..manifest import Manifest
    from .stage import finish_stage, out_base, run_kwargs, run_stage, work_dir_for

    api = endpoint.endpoint_config(args, "vlm", temperature=args.temperature, max_tokens=args.max_tokens,
                                   json_mode=not args.no_json_mode)
    assert isinstance(api, ApiConfig)
    man = Manifest(args.manifest, "jsonl")
    base, out = man.base.resolve(), Path(args.out)
    out_dir = out_base(out, Path(args.manifest))
    items = []
    for i in range(len(man)):
        row = man.row(i)
        key = str(row.get("id") or f"row{i}")
        items.append((key, {"row": row, "base": str(base), "out_base": str(out_dir)}))
    cfg = {"model": api.model, "recaption": args.recaption, "max_side": args.max_side}
    settings = {**cfg, "endpoint": endpoint.settings(api), "max_tokens": args.max_tokens,
                "input_sha256": file_digest(Path(args.manifest))}  # edited input → --restart, never stale rows
    st = Stage("caption", STEPS, functools.partial(process_row, cfg),
               init=functools.partial(endpoint.open_client, "vlm", api), executor="thread", fatal=(EndpointError,))
    endpoint.open_client("vlm", api)  # a missing key fails here, before any work
    kw = run_kwargs(args)
    result = run_stage(st, items, work_dir_for(out), settings, **kw)
    return finish_stage(st, items, result, [str(args.manifest)], out, settings, kw["shard"])

