"""Whole-condition CFG dropout (loom.data.packing): a training sample with all texts (or all images) dropped is
laid out exactly like the inference CFG branch (token ids, kinds, RoPE positions, frame ids as `ItemContexts`
builds them), and the measured frequencies over many seeded samples match the configured probabilities."""

from __future__ import annotations

import math
import random

import pytest
import torch
from infer_helpers import FIXTURE, pattern_image

from loom.data.builders import BuildConfig
from loom.data.builders.tutorial import history_items, plan_item, step_item, tutorial_prefix
from loom.data.loader import DataConfig, pack_plans, stable_seed
from loom.data.packing import CondDropout, PackGeometry, pack_sequences
from loom.data.types import PlanItem, SequencePlan
from loom.infer.loop import ItemContexts, inference_build_context


def _tutorial(engine, t: int = 4):
    """Items of frame t of a 4-step image→tutorial (reference, plan, history 1..t−1 at K_max 4, step text)."""
    bctx, images, mem = inference_build_context(engine, BuildConfig(vae_transform=(64, 32, 16),
                                                                     vit_transform=(56, 28, 14)))
    mem.images["input1"] = pattern_image(0)
    for k in range(1, 5):
        mem.images[f"frame{k}"] = pattern_image(k)
    items = [*tutorial_prefix(bctx, images, "Draw an owl", ["input1"]), plan_item(bctx, ["a", "b", "c", "d"]),
             *history_items(bctx, images, {k: f"frame{k}" for k in range(1, t)}), step_item(bctx, t, "d")]
    target = PlanItem("vae_image", image=images.vae(f"frame{t}"), loss=True, frame=t, timestep_logit=0.0)
    return items, target


def _inference_layout(engine, items, branch: str) -> list[tuple]:
    """Per token (kind, token id or frame, RoPE id) of the cond / text-uncond / image-uncond context."""
    eng, out = engine, []
    real = {n: getattr(eng, n) for n in ("text_block", "vit_block", "latent_block", "extend")}
    sot, eot = eng.tokens.start_of_image, eng.tokens.end_of_image

    def text_block(ctx, ids, wrap=True):
        blk = real["text_block"](ctx, ids, wrap)
        blk.meta = [("tok", i) for i in ([eng.tokens.bos, *ids, eng.tokens.eos] if wrap else ids)]
        return blk

    def vit_block(ctx, image, frame=0):
        blk = real["vit_block"](ctx, image, frame)
        blk.meta = [("tok", sot)] + [("vit", frame)] * (blk.emb.shape[0] - 2) + [("tok", eot)]
        return blk

    def latent_block(ctx, x, t, h, w, frame=0, *a, **k):
        blk = real["latent_block"](ctx, x, t, h, w, frame, *a, **k)
        blk.meta = [("tok", sot)] + [("vae", frame)] * (h * w) + [("tok", eot)]
        return blk

    def extend(ctx, blk):
        out.extend((*m, int(p)) for m, p in zip(blk.meta, blk.position_ids.tolist()))
        return real["extend"](ctx, blk)

    for name, fn in (("text_block", text_block), ("vit_block", vit_block), ("latent_block", latent_block),
                     ("extend", extend)):
        setattr(eng, name, fn)
    try:
        contexts = ItemContexts(eng, rope_gaps=True)
        chosen = items if branch == "cond" else contexts.drop(items, branch)
        ctx = contexts.build(chosen)
    finally:
        for name in real:
            delattr(eng, name)
    assert len(out) == ctx.kv_len
    return out, ctx.rope


def _training_layout(batch) -> tuple[list[tuple], int]:
    """The same per-token view of a packed single sample, without its noisy target (the last split)."""
    n = batch.sequence_length - batch.split_lens[-1]
    row: list = [None] * batch.sequence_length
    for i, tid in zip(batch.packed_text_indexes.tolist(), batch.packed_text_ids.tolist()):
        row[i] = ("tok", tid)
    for i, f in zip(batch.packed_vit_token_indexes.tolist(), batch.packed_vit_frame_ids.tolist()):
        row[i] = ("vit", f)
    for i, f in zip(batch.packed_vae_token_indexes.tolist(), batch.packed_vae_frame_ids.tolist()):
        row[i] = ("vae", f)
    pos = batch.packed_position_ids.tolist()
    assert batch.attn_modes[-1] == "noise"
    return [(*row[i], pos[i]) for i in range(n)], pos[n]  # the target's RoPE id = the context's next id


@pytest.mark.parametrize("branch,dropout", [("cond", CondDropout()), ("text", CondDropout(whole_text=1.0)),
                                            ("image", CondDropout(whole_image=1.0)),
                                            # per-item dropout on top never changes a whole-condition sample
                                            ("text", CondDropout(0.9, 0.9, 0.9, whole_text=1.0)),
                                            ("image", CondDropout(0.9, 0.9, 0.9, whole_image=1.0))])
def test_dropped_training_layout_equals_inference_branch(engine, branch, dropout):
    items, target = _tutorial(engine)
    batch = pack_sequences([SequencePlan([*items, target])], engine.tokens, PackGeometry.from_config(engine.cfg),
                           dropout, random.Random(3))
    train, train_rope = _training_layout(batch)
    infer, infer_rope = _inference_layout(engine, items, branch)
    assert train == infer and train_rope == infer_rope
    kinds = {k for k, *_ in train}
    assert ("vit" in kinds) == (branch != "image")
    if branch == "text":  # only the plan's text survives: scaffold and step text are gone
        assert sum(1 for k, i, _ in train if (k, i) == ("tok", engine.tokens.bos)) == 1


# ---- frequencies -------------------------------------------------------------------------------------------------
GEO = PackGeometry(vit_patch=14, latent_stride=16)


@pytest.fixture(scope="module")
def tiny_tokens():
    from loom.data.tokenizer import SpecialTokens, load_tokenizer

    return SpecialTokens.from_tokenizer(load_tokenizer(FIXTURE))


def _plan(num_images: int = 3) -> SequencePlan:
    img, vit = torch.zeros(3, 16, 16), torch.zeros(3, 14, 14)
    items = [PlanItem("text", text_ids=[11, 12], enable_cfg=True, name="prompt"),
             PlanItem("text", text_ids=[13, 14, 15], loss=True, name="plan")]
    for k in range(1, num_images + 1):
        items += [PlanItem("vae_image", image=img, enable_cfg=True, frame=k),
                  PlanItem("vit_image", image=vit, enable_cfg=True, frame=k)]
    items += [PlanItem("text", text_ids=[16], enable_cfg=True, name="step"),
              PlanItem("vae_image", image=img, loss=True, frame=num_images + 1, timestep_logit=0.0)]
    return SequencePlan(items, "freq")


def _context(b) -> str:
    """'text-uncond' / 'image-uncond' when the sample is exactly that inference branch's context, else 'other'."""
    texts, vits, vaes = b.attn_modes.count("causal"), b.vit_token_seqlens.numel(), len(b.vae_images)
    if (texts, vits, vaes) == (1, 3, 4):
        return "text-uncond"
    if (texts, vits, vaes) == (3, 0, 1):
        return "image-uncond"
    return "other"


def test_measured_frequencies_match_config(tiny_tokens):
    """The training loader's seeded packing (one key per sample) with the Loom task configs' probabilities:
    whole-condition 0.1 / 0.1 on top of BAGEL's per-item 0.1 / 0.3 / 0.3."""
    cfg = DataConfig(whole_text_cond_dropout=0.1, whole_image_cond_dropout=0.1)
    drop = cfg.cond_dropout()
    plan, n = _plan(), 3000
    counts = {"text-uncond": 0, "image-uncond": 0, "other": 0}
    for s in range(n):
        counts[_context(pack_plans([plan], [stable_seed("freq", s)], tiny_tokens, GEO, drop))] += 1
    rest = 1 - drop.whole_text - drop.whole_image
    # exact context by per-item chance: both eligible texts dropped, none of the 6 images (and vice versa)
    expect = {"text-uncond": drop.whole_text + rest * 0.1**2 * 0.7**6,
              "image-uncond": drop.whole_image + rest * 0.9**2 * 0.3**6}
    for k, p in expect.items():
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(counts[k] / n - p) < 4 * sigma, (k, counts[k] / n, p)
    # per-item dropout alone almost never produces them (the reason for whole-condition dropout)
    assert 0.1**2 * 0.7**6 < 0.0012 and 0.9**2 * 0.3**6 < 0.0006


def test_whole_condition_draw_is_seeded_and_leaves_per_item_draws(tiny_tokens):
    """Same key → same sample (resume stays exact); a sample whose whole-condition draw falls through keeps
    exactly the per-item dropout it had with whole-condition dropout off."""
    plan = _plan()
    per_item = CondDropout(0.5, 0.5, 0.5)
    both = CondDropout(0.5, 0.5, 0.5, whole_text=0.2, whole_image=0.2)
    fell_through = 0
    for s in range(40):
        key = stable_seed("seeded", s)
        a, b = (pack_plans([plan], [key], tiny_tokens, GEO, both) for _ in range(2))
        assert a.split_lens == b.split_lens and a.attn_modes == b.attn_modes
        u = random.Random(stable_seed(key, "whole-condition")).random()
        if both.whole_mode(u) is None:
            fell_through += 1
            c = pack_plans([plan], [key], tiny_tokens, GEO, per_item)
            assert c.split_lens == a.split_lens and torch.equal(c.packed_position_ids, a.packed_position_ids)
    assert 10 < fell_through < 40


def test_probabilities_are_checked():
    with pytest.raises(ValueError, match="whole_text \\+ whole_image ≤ 1"):
        CondDropout(whole_text=0.6, whole_image=0.5)
