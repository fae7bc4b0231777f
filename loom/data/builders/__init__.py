"""Manifest rows → `SequencePlan`s for `pack_sequences`, one builder per task family.

    ctx = BuildContext.from_manifest("data/x/manifest.jsonl", tokenizer, BuildConfig())
    for row in read_manifest(ctx.manifest):
        plans = build_plans(row, ctx, rng)  # list[SequencePlan]; .source = "manifest:row:id[#frame t]"
    batch = pack_sequences(plans, ctx.tokens, geometry, ctx.config.cond_dropout(), rng)

Token diagrams: `tutorial` (text/image→interleaved), `multi_image` (composition, decomposition, style),
`bagel` (t2i, edit, understanding). Every error is a `SampleError` whose message starts with the sample
source.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..records import SampleError, check_record, record_source
from ..types import SequencePlan
from .bagel import build_edit, build_t2i, build_understand
from .base import (
    BuildConfig,
    BuildContext,
    ImageCache,
    check_length,
    make_image_loader,
    plan_num_tokens,
    reference_slot,
    split_placeholders,
)
from .multi_image import build_decompose, build_single_output, reference_prompt_items
from .tutorial import build_tutorial, history_items, plan_item, scaffold_text, step_item, tutorial_prefix

Builder = Callable[[dict, BuildContext, random.Random, str], list[SequencePlan]]
BUILDERS: dict[str, Builder] = {
    "tutorial": build_tutorial,
    "compose": build_single_output,
    "style": build_single_output,
    "decompose": build_decompose,
    "t2i": build_t2i,
    "edit": build_edit,
    "understand": build_understand,
}


def build_plans(record: dict, ctx: BuildContext, rng: random.Random) -> list[SequencePlan]:
    """All training instances of one manifest row (a tutorial gives one per target frame, or
    `frames_per_visit` sampled ones). Raises `SampleError` naming the row for anything malformed."""
    source = record_source(record, ctx.manifest)
    c = ctx.config
    errors, _ = check_record(record, c.n_max, c.max_frames, c.max_references)
    if errors:
        raise SampleError(f"{source}: " + "; ".join(errors))
    plans = BUILDERS[record["task"]](record, ctx, rng, source)
    for p in plans:
        check_length(ctx, p)
    return plans


__all__ = [
    "BUILDERS", "BuildConfig", "BuildContext", "ImageCache", "SampleError", "build_plans", "history_items",
    "make_image_loader", "plan_item", "plan_num_tokens", "reference_prompt_items", "reference_slot",
    "scaffold_text", "split_placeholders", "step_item", "tutorial_prefix",
]
