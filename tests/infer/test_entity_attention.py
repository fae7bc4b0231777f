"""Localised entity CFG with an attention-derived mask: the opt-in q/k capture in the LLM, its map, the sampler
wiring (still one forward per denoising step), the CLI (`--entity-mask auto`) and result.json."""

from __future__ import annotations

import json
import math

import pytest
import torch
from infer_helpers import FIXTURE, TINY_ARGS, pattern_image

from loom.data.tokenizer import encode
from loom.data.transforms import pil_to_tensor
from loom.infer.cache import Context
from loom.infer.engine import ImageSamplerConfig
from loom.infer.entity_cfg import EntityGuidance, parse_layers, tag_token_positions
from loom.infer.loop import ItemContexts, inference_build_context
from loom.infer.pipeline import InputError
from loom.model.layers import apply_rope

H = W = 2  # latent grid of a 32×32 image on the tiny model
PROMPT = "the <model> of the photo wearing a <garment> in red"


def _contexts(engine):
    """cond = [VAE image, text with entity tags]; text-uncond = [VAE image]; entity key positions in cond."""
    img = pil_to_tensor(engine.prepare_image(pattern_image(3)))
    ctx = engine.add_image(Context(), pattern_image(3), vit=False)
    ids = encode(engine.tok, PROMPT)
    cond = engine.add_text(ctx, ids)
    pos = [ctx.kv_len + 1 + j for j in tag_token_positions(engine.tok, ids, ["<model>"])]
    assert img.shape[1:] == (32, 32) and pos
    return cond, ctx, pos


def _sampler(**kw):
    d = dict(num_timesteps=4, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval=(0.0, 1.0))
    return ImageSamplerConfig(**{**d, **kw})


def _noise(seed=0):
    return torch.randn(H * W, 64, generator=torch.Generator().manual_seed(seed))


def test_tag_positions_and_layers(engine):
    ids = encode(engine.tok, PROMPT)
    pos = tag_token_positions(engine.tok, ids, ["<model>"])
    assert engine.tok.decode([ids[j] for j in pos]).strip() == "<model>"
    both = tag_token_positions(engine.tok, ids, ["<model>", "<garment>"])
    assert set(pos) < set(both) and engine.tok.decode([ids[j] for j in both]).replace(" ", "") == "<model><garment>"
    assert parse_layers("all", 28) is None and parse_layers(None, 28) is None
    assert parse_layers("8-10,2,-1", 28) == (2, 8, 9, 10, 27)
    for bad in ("30", "a-b", ""):
        if bad:
            with pytest.raises(ValueError):
                parse_layers(bad, 28)


def test_capture_equals_manual_recomputation(engine):
    """Captured q/k of layer 0 equal q/k recomputed from the layer's input, and the entity map equals a
    softmax over the *masked* keys of the cond document, with a second (uncond) document in the same pass."""
    cond, uncond, pos = _contexts(engine)
    x = _noise()
    ctxs = [cond, uncond]
    blocks = [engine.latent_block(c, x, 0.7, H, W, 0, 0, "query") for c in ctxs]
    n = H * W + 2
    attn = engine.attention_modules()[0]
    seen = {}
    handle = attn.register_forward_hook(lambda m, a, kw, out: seen.update(args=a, kwargs=kw), with_kwargs=True)
    try:
        with engine.capture_attention((0,), slice(1, n - 1), slice(0, cond.kv_len + n)) as caps:
            engine.forward_blocks(ctxs, blocks)
    finally:
        handle.remove()
    assert all(m.capture is None for m in engine.attention_modules())
    xin, route, cos, sin, _spec, _backend, kv, layout = seen["args"][:8]
    # manual q/k: each expert's projections + q/k norms on its rows, RoPE, then each block's cached keys
    # followed by its new keys, block after block
    qkv = torch.empty(xin.shape[0], attn.num_heads + 2 * attn.num_kv_heads, attn.head_dim)
    gen = route.gen_idx
    und = route.und_idx
    qkv[und] = attn._qkv(xin[und], "")
    qkv[gen] = attn._qkv(xin[gen], "_moe_gen")
    h, hk = attn.num_heads, attn.num_kv_heads
    q, k = apply_rope(qkv[:, :h], cos, sin), apply_rope(qkv[:, h:h + hk], cos, sin)
    parts, r = [], 0
    for b, (nq, p) in enumerate(zip(layout.q_lens, layout.past_lens)):
        parts += [kv.keys[b][:p], k[r:r + nq]]
        r += nq
    k_all = torch.cat(parts)
    # every query block is a full (image) block: it sees all its own keys, nothing of the other block
    allowed = torch.block_diag(*[torch.ones(nq, p + nq) for nq, p in zip(layout.q_lens, layout.past_lens)]).bool()
    torch.testing.assert_close(caps[0]["q"], q[1:n - 1], rtol=0, atol=0)
    torch.testing.assert_close(caps[0]["k"], k_all[:cond.kv_len + n], rtol=0, atol=0)
    # manual attention over ALL keys of the pass with the pass's own mask
    logits = torch.einsum("qhd,khd->hqk", q, k_all.repeat_interleave(h // hk, 1)) / math.sqrt(attn.head_dim)
    logits = logits.masked_fill(~allowed[None], float("-inf"))
    probs = logits.softmax(-1)[:, 1:n - 1]  # cond's latent queries
    want = probs[:, :, pos].mean(dim=(0, 2))
    torch.testing.assert_close(engine.entity_map(caps, pos), want, rtol=1e-5, atol=1e-7)
    assert float(probs[:, :, cond.kv_len + n:].abs().max()) == 0.0  # nothing of the uncond document leaks in


def test_capture_off_and_equal_scale_are_bit_identical(engine):
    cond, uncond, pos = _contexts(engine)
    blocks = [engine.latent_block(c, _noise(), 0.7, H, W, 0, 0, "query") for c in (cond, uncond)]
    plain, _ = engine.forward_blocks([cond, uncond], blocks)
    with engine.capture_attention(None, slice(1, 5), slice(0, cond.kv_len + 6)) as caps:
        captured, _ = engine.forward_blocks([cond, uncond], blocks)
    assert torch.equal(plain, captured) and len(caps) == engine.cfg.llm.num_hidden_layers
    for renorm in ("global", "text_channel"):
        s = _sampler(cfg_renorm_type=renorm, cfg_img_scale=2.0)
        base = engine.generate_image(cond, uncond, uncond, H, W, s, noise=_noise())
        again = engine.generate_image(cond, uncond, uncond, H, W, s, noise=_noise())
        assert torch.equal(base, again)
        for ent in (EntityGuidance(4.0, positions=pos, step=2),
                    EntityGuidance(4.0, mask=torch.tensor([True, False, True, False]))):
            out = engine.generate_image(cond, uncond, uncond, H, W, s, noise=_noise(), entity=ent)
            assert torch.equal(out, base), (renorm, ent.source)  # s_entity = s: ordinary CFG exactly
            assert ent.used_mask is not None


@pytest.mark.parametrize("source", ["user", "attention"])
def test_velocity_differs_only_inside_mask(engine, source):
    cond, uncond, pos = _contexts(engine)
    s = _sampler(cfg_renorm_type="channel", cfg_img_scale=2.0)  # per-token renorm keeps guidance local
    ent = (EntityGuidance(9.0, mask=torch.tensor([True, False, False, True])) if source == "user" else
           EntityGuidance(9.0, positions=pos, layers=(0, 1), top_fraction=0.5))
    base, tr = {}, {}
    engine.generate_image(cond, uncond, uncond, H, W, s, noise=_noise(), trace=base)
    n0 = engine.num_forwards
    engine.generate_image(cond, uncond, uncond, H, W, s, noise=_noise(), trace=tr, entity=ent)
    assert engine.num_forwards - n0 == s.num_timesteps - 1  # capture rides on the one batched forward
    m = ent.used_mask
    assert m.dtype == torch.bool and int(m.sum()) == 2
    if source == "attention":
        assert ent.attention.shape == (H * W,) and bool((ent.attention > 0).all())
        assert ent.report()["mask_source"] == "attention" and ent.report()["coverage"] == 0.5
    v0, v1 = base["v"][0], tr["v"][0]  # step 0: same x, same branches
    for b0, b1 in zip(base["branches"][0], tr["branches"][0]):
        assert torch.equal(b0, b1)
    assert torch.equal(v0[~m], v1[~m])
    assert not torch.allclose(v0[m], v1[m])


def test_mask_from_later_step_and_checks(engine):
    """With step = 2 the first two steps are ordinary CFG (mask refined until step 2), step 2 is guided."""
    cond, uncond, pos = _contexts(engine)
    s = _sampler(cfg_renorm_type="channel")
    base, tr = {}, {}
    engine.generate_image(cond, uncond, None, H, W, s, noise=_noise(), trace=base)
    ent = EntityGuidance(9.0, positions=pos, step=1, top_fraction=0.25)
    n0 = engine.num_forwards
    engine.generate_image(cond, uncond, None, H, W, s, noise=_noise(), trace=tr, entity=ent)
    assert engine.num_forwards - n0 == 3
    assert not torch.equal(base["v"][0], tr["v"][0])  # mask exists from step 0 (running mean)
    assert int(ent.used_mask.sum()) == 1
    with pytest.raises(ValueError, match="context"):
        engine.generate_image(cond, uncond, None, H, W, s, noise=_noise(),
                              entity=EntityGuidance(2.0, positions=[cond.kv_len + 3]))
    with pytest.raises(ValueError, match="computed for"):
        engine.generate_image(cond, uncond, None, H, W, s, noise=_noise(),
                              entity=EntityGuidance(2.0, positions=pos, context_len=cond.kv_len - 1))
    with pytest.raises(ValueError, match="mask or entity"):
        EntityGuidance(2.0)


def test_item_token_positions_match_built_context(pipe, tiny_settings):
    s = tiny_settings().resolved("compose")
    pipe._set_transforms(s)
    eng = pipe.engine
    from loom.data.builders import reference_prompt_items

    bctx, images, mem = inference_build_context(eng, pipe.build)
    mem.images["input1"], mem.images["input2"] = pattern_image(1), pattern_image(2)
    items = reference_prompt_items(bctx, images, "The <model> of <image 1> holding the <bag> of <image 2>",
                                   ["input1", "input2"])
    contexts = ItemContexts(eng)
    pos, total = contexts.token_positions(items, ["<bag>"])
    cond, text_uncond, _ = contexts.branches(items)
    assert total == cond.kv_len and pos
    # independent check: the real key offset of every text item, from contexts built item by item
    expect = []
    for i, it in enumerate(items):
        if it.type == "text":
            start = contexts.build(items[:i]).kv_len if i else 0
            expect += [start + 1 + j for j in tag_token_positions(eng.tok, list(it.text_ids), ["<bag>"])]
            assert eng.tok.decode([it.text_ids[j] for j in tag_token_positions(eng.tok, list(it.text_ids),
                                                                               ["<bag>"])]).strip() in ("", "<bag>")
    assert pos == expect
    assert text_uncond is not None and max(pos) < cond.kv_len


def test_pipeline_auto_mask_and_errors(pipe, tiny_settings):
    s = tiny_settings(entity_scale=6.0, entity_mask="auto", entity_token="<bag>", entity_top_fraction=0.5,
                      entity_smooth=1)
    res = pipe.run("compose", "The <model> of <image 1> holding the <bag> of <image 2>",
                   [pattern_image(1), pattern_image(2)], s)
    (f,) = res.frames
    assert f.entity is not None and f.entity.tags == ("<bag>",)
    rep = f.entity.report()
    assert rep["mask_source"] == "attention" and rep["coverage"] == 0.5 and rep["layers"] == "all"
    assert res.timings["num_forwards"] >= s.num_timesteps - 1
    assert res.stats.num_forwards_denoise == s.num_timesteps - 1
    bad = [dict(entity_scale=6.0, entity_token="<scene>"), dict(entity_scale=6.0, entity_layers="7"),
           dict(entity_scale=6.0, entity_step=3), dict(entity_mask="auto"), dict(entity_scale=6.0, entity_threshold=2)]
    for kw in bad:
        with pytest.raises(InputError):
            pipe.run("compose", "The <model> of <image 1> holding the <bag> of <image 2>",
                     [pattern_image(1), pattern_image(2)], tiny_settings(**kw))
    with pytest.raises(InputError, match="applies to"):
        pipe.run("t2i", "a <model>", [], tiny_settings(entity_scale=6.0))


def test_cli_entity_auto_writes_mask_and_report(tmp_path, images):
    from loom.infer.__main__ import main

    out = tmp_path / "dec"
    argv = ["decompose", "--model", str(FIXTURE), "--out", str(out), *TINY_ARGS, "--prompt",
            "Extract the <upper> and the <lower> from <image 1>", "--image", images[0], "--entity-scale", "6",
            "--entity-mask", "auto", "--entity-layers", "0-1", "--entity-threshold", "0.4", "--entity-step", "1"]
    assert main(argv) == 0
    d = json.loads((out / "result.json").read_text())
    assert d["entity_cfg"]["mask_source"] == "attention" and 0.0 <= d["entity_cfg"]["coverage"] <= 1.0
    assert d["entity_cfg"]["frames_with_entity_cfg"] == 2
    steps = d["steps"]
    assert [st["entity_cfg"]["tokens"] for st in steps] == [["<upper>"], ["<lower>"]]  # output m ↔ m-th token
    assert steps[0]["entity_cfg"]["layers"] == [0, 1] and steps[0]["entity_cfg"]["step"] == 1
    assert d["forwards"]["per_denoising_step"] == 1.0
    assert d["settings"]["entity_mask"] == "auto" and d["settings"]["entity_threshold"] == 0.4
    from PIL import Image

    m = Image.open(out / steps[0]["entity_cfg"]["mask_image"])
    assert m.size == tuple(d["settings"]["output_size"]) and m.mode == "L"


def test_tutorial_frames_follow_their_step_tokens(pipe, tiny_settings):
    from loom.infer.planner import FixedPlanner

    res = pipe.run("tutorial", "Dress the <model> step by step", [], tiny_settings(entity_scale=6.0),
                   planner=FixedPlanner("Step 1: put the <upper> on\nStep 2: tidy up"))
    reps = [f.entity.report() for f in res.frames]
    assert [r["tokens"] for r in reps] == [["<upper>"], ["<model>", "<upper>"]]  # step 2 names none: all
    assert all(r["mask_source"] == "attention" and r["smooth"] == 3 for r in reps)
    assert res.stats.num_forwards_denoise == 2 * (res.settings.num_timesteps - 1)
