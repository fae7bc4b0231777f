"""Loom Eq. 3: the temporal table e_t. Zero-initialised it computes exactly BAGEL; non-zero it changes only
what can see a visual token; it saves / loads under `temporal_embed.weight`; a BAGEL file loads without it."""

import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from loom.data.packing import PackGeometry, pack_sequences
from loom.data.tokenizer import encode
from loom.data.transforms import ImageTransform
from loom.data.types import PlanItem, SequencePlan
from loom.model.loom import TEMPORAL_KEY, TemporalEmbedding
from loom.model.vae import encode_to_tokens
from loom.model.weights import load_bagel, save_state_dict
from loom.tools.fixture import Fixture, compare
from loom.tools.reference_cases import ModelContext, run_train_forward

ROOT = "tests/fixtures/bagel-tiny"


@pytest.fixture(scope="module")
def fx_ctx():
    return Fixture.load(ROOT), ModelContext(ROOT)


def test_zero_table_reproduces_train_forward_fixture(fx_ctx):
    fx, ctx = fx_ctx
    assert TEMPORAL_KEY in ctx.model.state_dict() and not ctx.model.temporal_embed.weight.any()
    got = run_train_forward(fx, ctx)
    for key in fx.cases["train_forward"]["expected"]:
        err, ok, note = compare(got[key], fx.tensors[key], fx.tolerance(key))
        assert ok, f"{key}: {err} {note}"
    # bit-exact against the same weights with the temporal embedding switched off (plain BAGEL)
    cfg_off = replace(ctx.cfg, temporal_embedding=False)
    off, *_ = load_bagel(ROOT, verbose=False, config=cfg_off, with_vae=False, with_tokenizer=False)
    assert not any(k.startswith("temporal_embed") for k in off.state_dict())
    got_off = run_train_forward(fx, SimpleNamespace(model=off.eval(), vae=ctx.vae, tok=ctx.tok, cfg=cfg_off,
                                                    tokens=ctx.tokens))
    assert got.keys() == got_off.keys()
    for k in got:
        assert torch.equal(got[k], got_off[k]), k


def _plans(ctx, frames: tuple[int, int, int]):
    """Sample A: text(CE) → clean VAE + ViT of frame a → text(CE) → noisy target of frame b.
    Sample B: the same layout with every frame 0 (must be unaffected by the table)."""
    vae_tf, vit_tf = ImageTransform(96, 64, 16), ImageTransform(84, 42, 14)
    img = Image.open(f"{ROOT}/images/b_rings_96x96.png")
    tgt = Image.open(f"{ROOT}/images/a_shapes_64x48.png")
    a, b, ref = frames

    def sample(fa, fb, fr, name):
        return SequencePlan([
            PlanItem("text", text_ids=encode(ctx.tok, "first words here"), loss=True),
            PlanItem("vae_image", image=vae_tf(tgt), frame=fr),
            PlanItem("vae_image", image=vae_tf(img), frame=fa),
            PlanItem("vit_image", image=vit_tf(img), frame=fa),
            PlanItem("text", text_ids=encode(ctx.tok, "then more words"), loss=True),
            PlanItem("vae_image", image=vae_tf(tgt), loss=True, frame=fb, timestep_logit=0.3),
        ], source=name)

    return [sample(a, b, ref, "A"), sample(0, 0, 0, "B")]


def _run(ctx, model, plans):
    batch = pack_sequences(plans, ctx.tokens, PackGeometry.from_config(ctx.cfg))
    p = ctx.cfg.latent_patch_size
    x0 = torch.cat(encode_to_tokens(ctx.vae, batch.vae_images, batch.vae_latent_shapes, p))
    batch.packed_noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return batch, model(batch, x0=x0, return_logits=True)


def test_nonzero_table_changes_only_what_sees_visual_tokens(fx_ctx):
    _, ctx = fx_ctx
    model = ctx.model
    plans = _plans(ctx, (1, 2, -1))
    _, base = _run(ctx, model, plans)
    _, zero_frames = _run(ctx, model, _plans(ctx, (0, 0, 0)))
    assert torch.equal(base.logits, zero_frames.logits) and torch.equal(base.v_pred, zero_frames.v_pred)
    try:
        with torch.no_grad():
            model.temporal_embed.weight.copy_(torch.randn(model.temporal_embed.weight.shape,
                                                          generator=torch.Generator().manual_seed(1)))
        batch, out = _run(ctx, model, plans)
    finally:
        with torch.no_grad():
            model.temporal_embed.weight.zero_()
    n1 = len(encode(ctx.tok, "first words here")) + 1  # CE positions of the first text (before any image)
    n2 = len(encode(ctx.tok, "then more words")) + 1
    la, lb = slice(0, n1), slice(n1, n1 + n2)  # sample A's two texts; sample B follows
    assert torch.equal(out.logits[la], base.logits[la])  # text before any visual token: bit-identical
    assert not torch.allclose(out.logits[lb], base.logits[lb])  # text after e_t-shifted images changes
    n_tgt = out.v_pred.shape[0] // 2
    assert not torch.allclose(out.v_pred[:n_tgt], base.v_pred[:n_tgt])  # the noisy target (e_2) changes
    assert torch.equal(out.v_pred[n_tgt:], base.v_pred[n_tgt:])  # sample B: every frame 0 → unaffected
    assert torch.equal(out.logits[n1 + n2:], base.logits[n1 + n2:])


def test_embedding_adds_exactly_row_e_t(fx_ctx):
    _, ctx = fx_ctx
    te = TemporalEmbedding(max_frames=8, max_references=4, dim=4)
    assert te.rows(torch.tensor([1, 8, -1, -4])).tolist() == [1, 8, 9, 12]  # references never share a row
    with torch.no_grad():
        te.weight.copy_(torch.arange(13 * 4, dtype=torch.float32).reshape(13, 4))
    out = te(torch.tensor([0, 3, -2]))
    assert torch.equal(out[0], torch.zeros(4)) and torch.equal(out[1], te.weight[3])
    assert torch.equal(out[2], te.weight[10])
    with pytest.raises(ValueError, match="frame id out of range"):
        te(torch.tensor([9]))
    with pytest.raises(ValueError, match="frame id out of range"):
        te(torch.tensor([-5]))
    model = ctx.model
    x = torch.randn(6, ctx.cfg.latent_token_dim)
    t, pos, frames = torch.zeros(6), torch.arange(6), torch.tensor([2, 2, 2, -1, -1, -1])
    try:
        with torch.no_grad():
            model.temporal_embed.weight.normal_()
            diff = model.embed_latents(x, t, pos, frames) - model.embed_latents(x, t, pos, None)
        rows = model.temporal_embed.weight[[2, 2, 2, ctx.cfg.max_frames + 1] + [ctx.cfg.max_frames + 1] * 2]
        torch.testing.assert_close(diff, rows, atol=1e-5, rtol=0)
    finally:
        with torch.no_grad():
            model.temporal_embed.weight.zero_()


def test_checkpoint_key_round_trip_and_bagel_zero_init(tmp_path, capsys, fx_ctx):
    _, ctx = fx_ctx
    model, *_ = load_bagel(ROOT, verbose=True, with_vae=False, with_tokenizer=False)
    assert f"initialised {TEMPORAL_KEY}" in capsys.readouterr().out  # plain BAGEL file: zero init, no error
    assert not model.temporal_embed.weight.any()
    with torch.no_grad():
        model.temporal_embed.weight.copy_(torch.linspace(-1, 1, model.temporal_embed.weight.numel()).reshape(
            model.temporal_embed.weight.shape))
    for name in ("llm_config.json", "vit_config.json"):
        shutil.copy(f"{ROOT}/{name}", tmp_path / name)
    save_state_dict(model.state_dict(), tmp_path / "ema.safetensors")
    again, *_ = load_bagel(tmp_path, verbose=False, with_vae=False, with_tokenizer=False)
    assert torch.equal(again.temporal_embed.weight, model.temporal_embed.weight)
    assert again.config.max_frames == ctx.cfg.max_frames
