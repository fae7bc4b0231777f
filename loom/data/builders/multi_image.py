"""Interleaved-input builders (Loom Fig. 2a, §3.3): composition, decomposition and style transfer.

Input image k sits inline at its `<image k>` placeholder (ViT + VAE, reference slot e₋ₖ, CFG-droppable);
the placeholder text is replaced by the image. Entity tokens (`<model>`, `<upper>`, `<style>` …) stay in the
text.

Composition  "Show the <model> from <image 1> holding the <bag> from <image 2>."
    [<im_start> Show the <model> from <im_end>] [I₁ VAE e₋₁] [I₁ ViT e₋₁]
    [<im_start> holding the <bag> from <im_end>] [I₂ VAE e₋₂] [I₂ ViT e₋₂] [<im_start> . <im_end>]
    [<vs> target VAE noisy e₁ <ve>]                                               MSE, noise

Decomposition (one composite → M outputs, generated one after another, each earlier output fed back clean;
BAGEL's multi-hop edit layout):
    [<im_start> Decompose <im_end>] [C VAE e₋₁] [C ViT e₋₁]
    [<im_start> into its <object> elements … <im_end>]
    [O₁ VAE noisy e₁] [O₁ VAE clean e₁] [O₁ ViT e₁]   (noisy and clean copy share one RoPE id)
    …
    [O_M VAE noisy e_M]

Style transfer  "Apply the <style> of <image 1> to <image 2>."  (input_images = [style, content])
    [<im_start> Apply the <style> of <im_end>] [S VAE e₋₁] [S ViT e₋₁] [<im_start> to <im_end>]
    [C VAE e₋₂] [C ViT e₋₂] [<im_start> . <im_end>] [target VAE noisy e₁]
"""

from __future__ import annotations

import random
from typing import Any

from ..types import PlanItem, SequencePlan
from .base import (
    BuildContext,
    ImageCache,
    check_slots,
    clean_image_items,
    layout_items,
    reference_slot,
    split_placeholders,
    target_item,
)


def reference_prompt_items(ctx: BuildContext, images: ImageCache, prompt: str,
                           refs: list[Any]) -> list[PlanItem]:
    """The prompt with every input image inline at its placeholder (unreferenced ones first), slots −k."""
    c = ctx.config
    layout = split_placeholders(prompt, len(refs), "before", images.source)
    return layout_items(ctx, images, layout, refs, reference_slot, c.cfg_text, c.cfg_images,
                        c.use_vit_for_references)


def build_single_output(record: dict, ctx: BuildContext, rng: random.Random,
                        source: str) -> list[SequencePlan]:
    """Composition and style transfer: N inline references → one target on timeline slot 1."""
    refs, target = list(record["input_images"]), record["targets"][0]
    check_slots(ctx, source, 1, len(refs))
    images = ImageCache(ctx, source)
    items = reference_prompt_items(ctx, images, record["prompt"], refs)
    items.append(target_item(ctx, images, target, 1, "target"))
    return [SequencePlan(items, source=source)]


def build_decompose(record: dict, ctx: BuildContext, rng: random.Random, source: str) -> list[SequencePlan]:
    refs, outs = list(record["input_images"]), list(record["targets"])
    check_slots(ctx, source, len(outs), len(refs))
    images = ImageCache(ctx, source)
    c = ctx.config
    items = reference_prompt_items(ctx, images, record["prompt"], refs)
    for m, rel in enumerate(outs, 1):
        items.append(target_item(ctx, images, rel, m, f"output{m}"))
        if m < len(outs):  # fed back clean so output m+1 sees it (noise isolation hides the noisy copy)
            items += clean_image_items(ctx, images, rel, m, c.cfg_images, c.use_vit_for_references,
                                       f"output{m}")
    return [SequencePlan(items, source=source)]
