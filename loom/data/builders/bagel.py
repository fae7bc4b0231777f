"""BAGEL's own families, kept in the mixture so Loom keeps its base abilities (bagel-spec §3.6). All use
temporal slot 0 (no e_t): these samples train exactly BAGEL's computation.

t2i         [<im_start> prompt <im_end>] (cfg)  [<vs> target VAE noisy <ve>] (MSE)
edit        [src VAE] [src ViT] (cfg)  [<im_start> instruction <im_end>] (cfg)  [target VAE noisy] (MSE)
understand  [<vs> ViT <ve>]…  [<im_start> prompt <im_end>]  [<im_start> answer <im_end>] (CE);
            nothing is ever dropped
Images named by `<image k>` sit inline; others go before the text (BAGEL's order).
"""

from __future__ import annotations

import random

from ..types import SequencePlan
from .base import BuildContext, ImageCache, layout_items, split_placeholders, target_item, text_item


def _no_slot(_: int) -> int:
    return 0


def build_t2i(record: dict, ctx: BuildContext, rng: random.Random, source: str) -> list[SequencePlan]:
    images = ImageCache(ctx, source)
    items = [text_item(ctx, record["prompt"], cfg=ctx.config.cfg_text, name="prompt"),
             target_item(ctx, images, record["targets"][0], 0, "target")]
    return [SequencePlan(items, source=source)]


def build_edit(record: dict, ctx: BuildContext, rng: random.Random, source: str) -> list[SequencePlan]:
    c = ctx.config
    images = ImageCache(ctx, source)
    srcs = list(record["input_images"])
    layout = split_placeholders(record["prompt"], len(srcs), "before", source)
    items = layout_items(ctx, images, layout, srcs, _no_slot, c.cfg_text, c.cfg_images, vit=True)
    items.append(target_item(ctx, images, record["targets"][0], 0, "target"))
    return [SequencePlan(items, source=source)]


def build_understand(record: dict, ctx: BuildContext, rng: random.Random, source: str) -> list[SequencePlan]:
    """VLM SFT layout: ViT-only images, no CFG dropout anywhere (BAGEL never drops VLM conditions)."""
    images = ImageCache(ctx, source)
    srcs = list(record.get("input_images", []))
    layout = split_placeholders(record["prompt"], len(srcs), "before", source)
    items = layout_items(ctx, images, layout, srcs, _no_slot, False, False, vit=True, vae=False)
    items.append(text_item(ctx, record["answer"], loss=True, name="answer"))
    return [SequencePlan(items, source=source)]
