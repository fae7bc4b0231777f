"""Inference contexts equal the training forward; batched CFG equals sequential CFG; one forward per step."""

from __future__ import annotations

import torch
from infer_helpers import pattern_image

from loom.data.builders import BuildConfig
from loom.data.builders.tutorial import history_items, plan_item, step_item, tutorial_prefix
from loom.data.history import sparse_history_indices
from loom.data.packing import CondDropout, PackGeometry, pack_sequences
from loom.data.types import PlanItem, SequencePlan
from loom.infer.cache import Context
from loom.infer.engine import ImageSamplerConfig
from loom.infer.loop import ItemContexts, inference_build_context
from loom.model.flow import inference_timesteps
from loom.model.vae import encode_to_tokens

LOGIT = 0.3


def _setup(engine, k_max: int = 2, num_frames: int = 4):
    cfg = BuildConfig(k_max=k_max, vae_transform=(64, 32, 16), vit_transform=(56, 28, 14))
    bctx, images, mem = inference_build_context(engine, cfg)
    mem.images["input1"] = pattern_image(0)
    for k in range(1, num_frames + 1):
        mem.images[f"frame{k}"] = pattern_image(k)
    return bctx, images


def _items(bctx, images, t: int):
    """Items of frame t of a 4-step image→tutorial (one reference, sparse history) and the target item."""
    prefix = tutorial_prefix(bctx, images, "Draw an owl", ["input1"])
    hist = sparse_history_indices(t - 1, bctx.config.k_max)
    items = [*prefix, plan_item(bctx, ["a", "b", "c", "d"]),
             *history_items(bctx, images, {k: f"frame{k}" for k in hist}), step_item(bctx, t, "d")]
    target = PlanItem("vae_image", image=images.vae(f"frame{t}"), loss=True, frame=t, timestep_logit=LOGIT)
    return items, target, hist


def _tutorial_items(engine, t: int = 4, k_max: int = 2):
    return _items(*_setup(engine, k_max), t)


def _train_velocity(engine, items, target, dropout: CondDropout | None = None):
    model = engine.model
    batch = pack_sequences([SequencePlan([*items, target])], engine.tokens, PackGeometry.from_config(model.config),
                           dropout=dropout)
    x0 = torch.cat(encode_to_tokens(engine.vae, batch.vae_images, batch.vae_latent_shapes,
                                    model.config.latent_patch_size))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    batch.packed_noise = noise
    with torch.no_grad():
        out = model(batch, x0=x0)
    tgt = torch.isfinite(batch.packed_timestep_logits)
    return out.v_pred, x0[tgt], noise[tgt]


def _infer_velocity(engine, ctx: Context, x0, noise, frame: int, h: int, w: int):
    t = torch.sigmoid(torch.tensor(LOGIT)).item()
    x_t = (1 - t) * x0 + t * noise
    blk = engine.latent_block(ctx, x_t, t, h, w, frame, 0, "query")
    hid, _ = engine.forward_blocks([ctx], [blk])
    return engine.model.llm2vae(hid[1:-1])


def test_cached_context_equals_training_forward(engine):
    """cond / text-uncond / image-uncond contexts built from the training builders + KV cache give the same
    velocity as ONE full training forward of the same sample (with all CFG texts / images dropped)."""
    items, target, hist = _tutorial_items(engine)
    assert hist == [1, 2]
    ctxs = ItemContexts(engine, rope_gaps=True)
    cond, text_uncond, img_uncond = ctxs.branches(items)
    h = w = 2  # 32 px / 16 px per token
    for ctx, drop in ((cond, None), (text_uncond, CondDropout(text=1.0)),
                      (img_uncond, CondDropout(vit=1.0, vae=1.0))):
        v_train, x0, noise = _train_velocity(engine, items, target, drop)
        v_inf = _infer_velocity(engine, ctx, x0, noise, 4, h, w)
        assert v_train.shape == (4, 64)
        torch.testing.assert_close(v_inf, v_train, atol=2e-5, rtol=1e-4)
    # the cond context holds every item: 2 text + ref (VAE 4+2, ViT 4+2) + plan + 2 history frames + step
    assert cond.kv_len > text_uncond.kv_len > 0 and cond.kv_len > img_uncond.kv_len > 0
    assert img_uncond.rope == cond.rope  # dropped images still advance RoPE, as the training packer does


def test_frame_ids_matter(engine):
    """Temporal embeddings are wired: the same context with the target on another slot changes the velocity."""
    items, target, _ = _tutorial_items(engine)
    cond = ItemContexts(engine).build(items)
    _, x0, noise = _train_velocity(engine, items, target)
    a = _infer_velocity(engine, cond, x0, noise, 4, 2, 2)
    b = _infer_velocity(engine, cond, x0, noise, 3, 2, 2)
    assert (a - b).abs().max() > 1e-3


def test_batched_cfg_equals_sequential(engine):
    items, _, _ = _tutorial_items(engine)
    cond, tu, iu = ItemContexts(engine).branches(items)
    sampler = ImageSamplerConfig(num_timesteps=5, cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0))
    noise = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    n0 = engine.num_forwards
    trace: dict = {}
    batched = engine.generate_image(cond, tu, iu, 2, 2, sampler, noise=noise, frame=4, trace=trace)
    assert engine.num_forwards - n0 == sampler.num_timesteps - 1  # ONE forward per denoising step, CFG on
    # sequential reference: one forward per branch per step
    from loom.infer.sampling import combine_cfg
    from loom.model.flow import euler_step

    ts = inference_timesteps(5, 3.0)
    x = noise.clone()
    for i in range(4):
        t = float(ts[i])
        vs = []
        for ctx in (cond, tu, iu):
            blk = engine.latent_block(ctx, x, t, 2, 2, 4, 0, "query")
            hid, _ = engine.forward_blocks([ctx], [blk])
            vs.append(engine.model.llm2vae(hid[1:-1]).float())
        torch.testing.assert_close(trace["branches"][i][0], vs[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(trace["branches"][i][1], vs[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(trace["branches"][i][2], vs[2], atol=1e-5, rtol=1e-5)
        v = combine_cfg(vs[0], vs[1], vs[2], 4.0, 2.0, "global", 0.0)
        x = euler_step(x, v, ts[i], ts[i + 1])
    torch.testing.assert_close(batched, x, atol=1e-5, rtol=1e-5)


def test_prefix_reuse_counts(engine):
    """The next step's contexts re-encode only the new history frame and the step text (prefix KV reuse)."""
    ctxs = ItemContexts(engine)
    bctx, images = _setup(engine, k_max=4)
    items3, _, _ = _items(bctx, images, 3)  # history [1, 2]
    ctxs.branches(items3)
    # cond: scaffold, ref VAE, ref ViT, plan, 2 × (VAE, ViT), step = 9 items; text-uncond: ref (2) + plan +
    # frames (4) = 7; image-uncond: scaffold + 2 gaps + plan + 4 gaps + step = 9
    assert ctxs.num_prefill_items == 9 + 7 + 9
    n0, f0 = ctxs.num_prefill_items, engine.num_forwards
    ctxs.branches(items3)  # all cached: nothing encoded
    assert ctxs.num_prefill_items == n0 and engine.num_forwards == f0
    # frame 4 (history [1, 2, 3]) built from fresh item objects of the same frames: cond + frame 3 (2) + step,
    # text-uncond + frame 3 (2), image-uncond + 2 gaps + step → 8 items, 6 forwards (gaps cost none)
    items4, _, hist = _items(bctx, images, 4)
    assert hist == [1, 2, 3]
    ctxs.branches(items4)
    assert ctxs.num_prefill_items - n0 == 8
    assert engine.num_forwards - f0 == 6
