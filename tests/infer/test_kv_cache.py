"""The shared, append-only KV cache: outputs bit-identical to the concatenating cache it replaced, fewer bytes
held, pages of dropped history frames freed, and per denoising step no cached K/V copied and no K/V repeated."""

from __future__ import annotations

import weakref

import pytest
import torch
from infer_helpers import FIXTURE, pattern_image
from kv_count import KVCopyCounter

from loom.data.builders import BuildConfig
from loom.infer.cache import BlockKV, Context, held_bytes
from loom.infer.engine import ImageSamplerConfig
from loom.infer.loop import ItemContexts, inference_build_context, render_tutorial
from loom.infer.planner import FixedPlanner

GOLDEN = FIXTURE.parents[1] / "infer" / "kv_golden_d530fe2.safetensors"
STEPS = ["pencil outline", "ink the lines", "flat colours", "shadows", "highlights", "background"]


def test_outputs_bit_identical_to_the_concatenating_cache():
    """Tutorial (6 frames, K_max 2, text + image CFG), decoding then rendering, t2i, edit, understanding: every
    output equals, bit for bit, what main @ d530fe2 produced (contexts concatenated per forward, GQA repeats)."""
    import PIL
    from kv_golden import make_pipe, run_cases
    from safetensors import safe_open
    from safetensors.torch import load_file

    meta = safe_open(str(GOLDEN), "pt").metadata()
    now = {"torch": torch.__version__, "pillow": PIL.__version__}
    if meta != now:
        pytest.skip(f"golden recorded with {meta}, this machine has {now}: re-record with tests/infer/kv_golden.py")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded: a reduction's split over threads may change its last bit
    try:
        got = run_cases(make_pipe())
    finally:
        torch.set_num_threads(threads)
    want = load_file(str(GOLDEN))
    assert sorted(got) == sorted(want)
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"not bit-identical: {differ}"


def _tutorial(engine, k_max: int, snapshots: list, last: list | None = None):
    last = [] if last is None else last
    cfg = BuildConfig(k_max=k_max, vae_transform=(64, 32, 16), vit_transform=(56, 28, 14))
    bctx, images, mem = inference_build_context(engine, cfg)
    mem.images["input1"] = pattern_image(0)
    contexts = ItemContexts(engine, rope_gaps=True)
    from loom.data.builders.tutorial import tutorial_prefix

    prefix = tutorial_prefix(bctx, images, "Draw an owl", ["input1"])
    plan = FixedPlanner(STEPS)("Draw an owl", [], "", 6, None)
    from loom.data.builders.tutorial import plan_item

    def on_frame(t, n, hist):
        def cb(i, total):
            if i == total:  # end of frame t: what the cache holds now (bytes; the contexts of the last frame)
                cached = contexts.cached()
                snapshots.append((hist, held_bytes(cached), sum(c.nbytes for c in cached)))
                last[:] = [cached]
        return cb

    sampler = ImageSamplerConfig(num_timesteps=3, cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0))
    out = render_tutorial(engine, contexts, bctx, images, mem, prefix, plan_item(bctx, plan.steps), plan.steps, 2, 2,
                          sampler, 0, k_max, on_frame_start=on_frame)
    return out, contexts


def test_shared_prefixes_hold_fewer_bytes(engine):
    """Every cached context used to be its own concatenated copy; now contexts that share a prefix reference one
    stored copy. Measured after every frame of a 6-frame image→tutorial: bytes of the distinct pages held vs the
    bytes one copy per cached context takes."""
    snaps: list = []
    out, contexts = _tutorial(engine, 2, snaps)
    assert [f.history for f in out.frames] == [[], [1], [1, 2], [1, 2], [1, 2], [1, 3]]
    held = [h for _, h, _ in snaps]
    copies = [c for _, _, c in snaps]
    assert all(h < c for h, c in zip(held, copies)), (held, copies)
    assert sum(held) < 0.6 * sum(copies), (held, copies)  # measured 0.35 on the fixture (2 layers, Hkv 2, d 16)


def test_dropped_history_frames_free_their_pages(engine):
    """Frame 6 (K_max 2) has history [1, 3]: frame 2 left it for good, and the pages holding it are freed."""
    snaps, last, frame2_pages = [], [], []

    real_append = Context.append

    def spy(self, new_kv, rope_advance, what):
        ctx = real_append(self, new_kv, rope_advance, what)
        if what.endswith("@2"):  # history frame 2's VAE / ViT block (e_2)
            frame2_pages.append(weakref.ref(ctx.segments[-1].page))
        return ctx

    Context.append = spy
    try:
        _tutorial(engine, 2, snaps, last)
    finally:
        Context.append = real_append
    assert frame2_pages and snaps[-1][0] == [1, 3]
    import gc

    gc.collect()
    assert all(ref() is None for ref in frame2_pages)
    assert not any("@2" in w for c in last[0] for w in c.log)


def test_denoising_step_copies_no_cached_kv(engine):
    """After the branches are prepared once per image, a denoising step writes only its query's new K/V (≤ one
    copy of them) and repeats no K/V for GQA; the concatenating cache copied every context twice per step."""
    from test_parity import _tutorial_items

    items, _, _ = _tutorial_items(engine)
    cond, tu, iu = ItemContexts(engine).branches(items)
    llm = engine.cfg.llm
    counter = KVCopyCounter(llm.num_attention_heads, llm.num_key_value_heads, llm.head_dim)
    per_step: list[tuple[int, int]] = []

    def cb(i, total):
        per_step.append((counter.kv_bytes, counter.repeats))

    sampler = ImageSamplerConfig(num_timesteps=5, cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0))
    noise = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    with counter:
        engine.generate_image(cond, tu, iu, 2, 2, sampler, noise=noise, frame=4, callback=cb)
    n_new = 3 * (2 * 2 + 2)  # three branches, 2×2 latent tokens + 2 markers each
    one_copy = llm.num_hidden_layers * 2 * n_new * llm.num_key_value_heads * llm.head_dim * 4
    steps = [(b1 - b0, r1 - r0) for (b0, r0), (b1, r1) in zip(per_step, per_step[1:])]
    assert len(steps) == 3 and all(b <= one_copy for b, _ in steps), (steps, one_copy)
    assert all(r == 0 for _, r in steps) and counter.repeats == 0
    assert cond.kv_len * 2 * llm.num_key_value_heads * llm.head_dim * 4 > one_copy  # the old per-step cost was more


def test_decoding_appends_in_place(engine):
    """Text decoding moves its context to a page with room once; every token is then claimed in place."""
    ctx = engine.add_text(Context(), "hello there")
    ids, _, out = engine.generate_text(ctx, max_length=5, stop_at_eos=False)
    assert len(out.segments) == 1 and out.kv_len == ctx.kv_len + 5
    page = out.segments[0].page
    assert page.used == out.kv_len and page.capacity == ctx.kv_len + 5
    # the original context is untouched (persistent values) and still reads its own rows
    assert ctx.kv_len == out.kv_len - 5 and ctx.segments[0].page is not page


def test_overwritten_block_kv_is_refused(engine):
    """Two forwards on the same page tip before an append: the first block's K/V are gone, so appending them
    raises instead of caching the second block's K/V."""
    ctx = engine.add_text(Context(), "hello").with_room(4)
    _, kv1 = engine.forward_blocks([ctx], [engine.text_block(ctx, [5], wrap=False)])
    _, kv2 = engine.forward_blocks([ctx], [engine.text_block(ctx, [6], wrap=False)])
    assert isinstance(kv1[0], BlockKV) and kv1[0].slot is not None
    with pytest.raises(RuntimeError, match="overwritten"):
        ctx.append(kv1[0], 1, "gen")
    assert ctx.append(kv2[0], 1, "gen").kv_len == ctx.kv_len + 1
