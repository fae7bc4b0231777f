"""Tutorial builder: text→interleaved and image→interleaved (Loom §3.2, Fig. 2c, appendix A.1).

One training instance per target frame t (multi-round alignment: every instance predicts the *same* whole
plan, then renders a different frame). Token diagram of the instance for frame t of an N-step tutorial:

    [<im_start> scaffold(prompt) <im_end>]              text, cfg                         causal
    ([<vs> ref VAE e₋₁ <ve>] [<vs> ref ViT e₋₁ <ve>])   image→interleaved only, cfg       full, full
    [<im_start> Step 1: S₁\\n … Step N: S_N <im_end>]    the plan, CE (never dropped)      causal
    for k in H_t = sparse_history_indices(t−1, K_max, o):
        [<vs> I_k VAE clean e_k <ve>] [<vs> I_k ViT e_k <ve>]   cfg                       full, full
    [<im_start> Step t: S_t <im_end>]                   stepwise prompt, cfg              causal
    [<vs> I_t VAE noisy e_t <ve>]                       MSE target                        noise

RoPE: text advances by its length, each clean image block by 1, the noisy target by 0 (bagel-spec §3.5).
Ablations: `stepwise_prompt=False` drops the `Step t` item; `k_max=0` drops the history;
`use_temporal=False` sets every slot to 0. Training draws o per instance (Eq. 6); `rotate_history=False`
uses o = 0.

Inference (plan-then-render) replays the same layout through the engine:
    layout = split_placeholders(scaffold_text(cfg, prompt), len(refs), "after")  # text / ref indices
    text → add_text(seg); ref index i → add_image(refs[i], frame=reference_slot(i))
    steps = parse_plan(<the generated plan turn>).steps
    for t in 1..N:
        H = sparse_history_indices(t − 1, cfg.k_max)    # o = 0; every frame while t − 1 ≤ K_max
        context = prefix + plan + [frame k, frame=k for k in H] + format_step(t, steps[t − 1])
        render frame t with frame=t
H_t is not a prefix of H_{t+1} once t > K_max, so the engine forks the cached prefix (scaffold, refs, plan)
and appends the history per frame. The `*_item(s)` helpers below give the same items as PlanItems.
"""

from __future__ import annotations

import random
from typing import Any

from ..history import sample_history
from ..plan import format_plan, format_step, render_scaffold
from ..records import SampleError, tutorial_steps
from ..types import PlanItem, SequencePlan
from .base import (
    BuildConfig,
    BuildContext,
    ImageCache,
    clean_image_items,
    layout_items,
    reference_slot,
    split_placeholders,
    target_item,
    text_item,
)


def scaffold_text(ctx: BuildContext | BuildConfig, prompt: str, num_steps: int | None = None) -> str:
    """The planning scaffold around the raw prompt (a config template); takes a context or its config."""
    c = ctx.config if isinstance(ctx, BuildContext) else ctx
    return render_scaffold(c.scaffold, prompt, c.n_max, num_steps)


def tutorial_prefix(ctx: BuildContext, images: ImageCache, prompt: str, references: list[Any],
                    num_steps: int | None = None) -> list[PlanItem]:
    """Scaffold + prompt, then the reference image(s) (ViT + VAE, slots −1, −2, …) unless the prompt
    places them itself with `<image k>`."""
    c = ctx.config
    text = scaffold_text(ctx, prompt, num_steps)
    layout = split_placeholders(text, len(references), "after", images.source)
    return layout_items(ctx, images, layout, references, reference_slot, c.cfg_text, c.cfg_images,
                        c.use_vit_for_references, name="scaffold")


def plan_item(ctx: BuildContext, steps: list[str]) -> PlanItem:
    """The whole plan as one CE-supervised text item. Never CFG-dropped (the public code dropped the plan
    target itself 10 % of the time)."""
    return text_item(ctx, format_plan(steps), loss=True, cfg=False, name="plan")


def history_items(ctx: BuildContext, images: ImageCache, frames: dict[int, Any]) -> list[PlanItem]:
    """Clean history frames {k: image ref} in increasing k, each VAE (+ ViT) with e_k."""
    c = ctx.config
    out: list[PlanItem] = []
    for k in sorted(frames):
        out += clean_image_items(ctx, images, frames[k], k, c.cfg_images, c.use_vit_for_history,
                                 f"history{k}")
    return out


def step_item(ctx: BuildContext, t: int, text: str) -> PlanItem:
    """The stepwise prompt `Step t: S_t` that immediately precedes frame t."""
    return text_item(ctx, format_step(t, text), cfg=ctx.config.cfg_text, name=f"step{t}")


def build_tutorial(record: dict, ctx: BuildContext, rng: random.Random, source: str) -> list[SequencePlan]:
    c = ctx.config
    steps, problems = tutorial_steps(record)
    frames = list(record.get("frames", []))
    if problems or not steps:
        raise SampleError(f"{source}: " + ("; ".join(problems) or "empty plan"))
    if len(steps) != len(frames):
        more = "more steps than images" if len(steps) > len(frames) else "more images than steps"
        raise SampleError(f"{source}: {more} ({len(steps)} plan steps, {len(frames)} frames)")
    steps, frames = steps[:c.n_max], frames[:c.n_max]  # truncate at N_max (appendix A.1)
    n = len(steps)
    images = ImageCache(ctx, source)
    prefix = tutorial_prefix(ctx, images, record["prompt"], list(record.get("input_images", [])))
    plan = plan_item(ctx, steps)
    if c.frames_per_visit == 0:  # plan-only instance: the shared prefix, CE on the plan, no frame
        return [SequencePlan([*prefix, plan], source=f"{source}#plan")]
    targets = list(range(1, n + 1))
    if c.frames_per_visit is not None and c.frames_per_visit < n:
        targets = sorted(rng.sample(targets, c.frames_per_visit))
    out = []
    for t in targets:
        hist = sample_history(t - 1, c.k_max, rng if c.rotate_history else None)
        items = [*prefix, plan, *history_items(ctx, images, {k: frames[k - 1] for k in hist})]
        if c.stepwise_prompt:
            items.append(step_item(ctx, t, steps[t - 1]))
        items.append(target_item(ctx, images, frames[t - 1], t, f"frame{t}"))
        out.append(SequencePlan(items, source=f"{source}#frame{t}"))
    return out
