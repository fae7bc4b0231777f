"""Mask semantics against an independent dense reference, and the three backends agreeing."""

from __future__ import annotations

import pytest
import torch

from loom.model.attention import MaskSpec, attention, flash_available, spec_from_splits


def reference_mask(sample_lens, split_lens, modes):
    """Straight transcription of bagel-spec §3.4 (dense path), loop by loop."""
    total = sum(sample_lens)
    m = torch.zeros(total, total, dtype=torch.bool)
    splits, i = [], 0
    for n, mode in zip(split_lens, modes):
        splits.append((i, i + n, mode))
        i += n
    start = 0
    for sl in sample_lens:
        end = start + sl
        mine = [s for s in splits if s[0] >= start and s[1] <= end]
        for a, b, mode in mine:
            for q in range(a, b):
                for k in range(start, b):
                    m[q, k] = k <= q if mode == "causal" and k >= a else True
        for a, b, mode in mine:  # noise splits: hidden from every other row of the sample
            if mode == "noise":
                m[start:end, a:b] = False
                m[a:b, a:b] = True
        start = end
    return m


PACK = dict(  # two samples; the second has two noise splits and a clean copy after a target
    sample_lens=[9, 19],
    split_lens=[4, 5, 3, 4, 3, 5, 4],
    modes=["causal", "noise", "full", "noise", "causal", "noise", "full"],
)


def test_dense_mask_matches_reference():
    spec = spec_from_splits(PACK["sample_lens"], PACK["split_lens"], PACK["modes"])
    ref = reference_mask(PACK["sample_lens"], PACK["split_lens"], PACK["modes"])
    assert torch.equal(spec.dense(), ref)
    m = spec.dense()
    # nothing outside a noise split attends to it; samples never see each other
    assert not m[16:19, 12:16].any() and not m[24:28, 12:16].any() and not m[24:28, 19:24].any()
    assert not m[9:, :9].any() and not m[:9, 9:].any()
    assert m[12:16, 12:16].all() and m[19:24, 9:12].all() and not m[19:24, 12:16].any()


def test_mask_matches_fixture_matrices(fixture_dir):
    import json

    from safetensors.torch import load_file

    meta = json.loads((fixture_dir / "cases.json").read_text())["cases"]["train_forward"]
    t = load_file(str(fixture_dir / "cases.safetensors"))
    spec = spec_from_splits(meta["sample_lens"], meta["split_lens"], meta["attn_modes"]).dense()
    s = 0
    for i, n in enumerate(meta["sample_lens"]):
        assert torch.equal(spec[s:s + n, s:s + n], t[f"train_forward/sample{i}/attention_mask"])
        s += n


def _qkv(lq, lk, h=4, hkv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(lq, h, d, generator=g), torch.randn(lk, hkv, d, generator=g),
            torch.randn(lk, hkv, d, generator=g))


def test_sdpa_equals_explicit_softmax():
    spec = spec_from_splits(PACK["sample_lens"], PACK["split_lens"], PACK["modes"])
    q, k, v = _qkv(28, 28)
    out = attention(q, k, v, spec, "sdpa")
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = torch.einsum("qhd,khd->hqk", q, kk) / 4.0
    s = s.masked_fill(~spec.dense()[None], float("-inf"))
    ref = torch.einsum("hqk,khd->qhd", s.softmax(-1), vv)
    assert torch.allclose(out, ref, atol=1e-5)


def test_flex_matches_sdpa_on_training_pack():
    pytest.importorskip("torch.nn.attention.flex_attention")
    spec = spec_from_splits(PACK["sample_lens"], PACK["split_lens"], PACK["modes"])
    q, k, v = _qkv(28, 28, seed=1)
    try:
        out = attention(q, k, v, spec, "flex")
    except Exception as e:  # flex on CPU needs a compiler toolchain in some builds
        pytest.skip(f"flex attention unavailable on this machine: {e}")
    assert torch.allclose(out, attention(q, k, v, spec, "sdpa"), atol=1e-5)


def _cached_spec(past, new, causal):
    """One document per (past, new) pair: new queries appended after cached keys (inference layout)."""
    qd, qp, qs, qm, kd, kp, ks = [], [], [], [], [], [], []
    for b, (p, n) in enumerate(zip(past, new)):
        qd += [b] * n
        qp += list(range(p, p + n))
        qs += [2 * b + 1] * n
        qm += [0 if causal else 1] * n
        kd += [b] * (p + n)
        kp += list(range(p + n))
        ks += [2 * b] * p + [2 * b + 1] * n
    t = torch.tensor
    return MaskSpec(t(qd), t(qp), t(qs), t(qm), t(kd), t(kp), t(ks), torch.zeros(len(kd), dtype=torch.bool))


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_layout_and_flash_agree(causal):
    spec = _cached_spec([5, 0, 7], [3, 4, 1], causal)
    cu_q, cu_k, mq, mk, c = spec.varlen_layout()
    assert cu_q.tolist() == [0, 3, 7, 8] and cu_k.tolist() == [0, 8, 12, 20] and (mq, mk, c) == (4, 8, causal)
    q, k, v = _qkv(8, 20, seed=2)
    ref = attention(q, k, v, spec, "sdpa")
    # bottom-right causal: the last query of doc 0 sees all 8 keys, the first sees 6
    m = spec.dense()
    assert m[2, :8].all() and (m[0, :8].sum() == (6 if causal else 8))
    if not flash_available():
        pytest.skip("flash-attn not installed (GPU extra)")
    out = attention(q.cuda().half(), k.cuda().half(), v.cuda().half(), spec.to("cuda"), "flash")
    assert torch.allclose(out.float().cpu(), ref, atol=2e-2)


def test_training_pack_has_no_varlen_layout():
    spec = spec_from_splits(PACK["sample_lens"], PACK["split_lens"], PACK["modes"])
    assert spec.varlen_layout() is None  # noise splits: flash falls back to flex/sdpa


@pytest.mark.parametrize("which", ["pack", "cached"])
def test_sdpa_per_document_equals_one_dense_mask(which):
    """The sdpa backend attends per document (Σ L² work); the result equals one dense mask over everything."""
    from loom.model.attention import _sdpa_dense

    if which == "pack":
        spec = spec_from_splits(PACK["sample_lens"], PACK["split_lens"], PACK["modes"])
        q, k, v = _qkv(28, 28, seed=4)
    else:
        spec = _cached_spec([5, 0, 7], [3, 4, 1], True)
        q, k, v = _qkv(8, 20, seed=4)
    blocks = spec.document_blocks
    assert blocks is not None and len(blocks) == (2 if which == "pack" else 3)
    ref = _sdpa_dense(q, k, v, spec.dense())
    assert torch.allclose(attention(q, k, v, spec, "sdpa"), ref, atol=1e-6)
    # documents that are not contiguous runs fall back to the single dense mask
    t = torch.tensor
    odd = MaskSpec(t([0, 1, 0]), t([0, 0, 1]), t([0, 1, 0]), t([0, 0, 0]), t([0, 1, 0]), t([0, 0, 1]),
                   t([0, 1, 0]), torch.zeros(3, dtype=torch.bool))
    assert odd.document_blocks is None and odd.varlen_layout() is None
    q3, k3, v3 = _qkv(3, 3, seed=5)
    assert torch.allclose(attention(q3, k3, v3, odd, "sdpa"), _sdpa_dense(q3, k3, v3, odd.dense()), atol=1e-6)


def _tiny_pack(model_cfg, seed: int = 0):
    from loom.data.packing import PackGeometry, pack_sequences
    from loom.data.tokenizer import SpecialTokens
    from loom.data.types import PlanItem, SequencePlan

    g = torch.Generator().manual_seed(seed)
    img = lambda s: torch.rand(3, s, s, generator=g) * 2 - 1  # noqa: E731
    plans = [SequencePlan([PlanItem("text", text_ids=list(range(10, 30)), loss=True),
                           PlanItem("vit_image", image=img(28)), PlanItem("vae_image", image=img(32)),
                           PlanItem("text", text_ids=list(range(40, 48))),
                           PlanItem("vae_image", image=img(32), loss=True, timestep_logit=0.2)])
             for _ in range(2)]
    tokens = SpecialTokens(bos=501, eos=502, start_of_image=503, end_of_image=504)
    return pack_sequences(plans, tokens, PackGeometry.from_config(model_cfg))


def test_flex_builds_one_block_mask_per_distinct_mask(monkeypatch):
    """A training forward with the flex backend builds one block mask for all LLM layers and one for all ViT
    layers (2 distinct masks), not one per attention call — and equals the sdpa forward."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    import torch.nn.attention.flex_attention as fa

    from loom.model.configs import preset
    from loom.model.loom import Loom
    from loom.model.vae import build_autoencoder, encode_to_tokens

    torch.manual_seed(0)
    cfg = preset("loom-tiny")
    cfg.llm.num_hidden_layers, cfg.vit.num_hidden_layers = 3, 2
    model = Loom(cfg).eval()
    batch = _tiny_pack(cfg)
    x0 = torch.cat(encode_to_tokens(build_autoencoder(cfg.vae), batch.vae_images, batch.vae_latent_shapes,
                                    cfg.latent_patch_size))
    batch.packed_noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    calls = []
    real = fa.create_block_mask
    monkeypatch.setattr(fa, "create_block_mask", lambda *a, **k: calls.append(a[3:5]) or real(*a, **k))
    with torch.no_grad():
        ref = model(batch, x0=x0)
        model.attn_backend = "flex"
        try:
            out = model(batch, x0=x0)
        except Exception as e:  # flex on CPU needs a compiler toolchain in some builds
            pytest.skip(f"flex attention unavailable on this machine: {e}")
    assert len(calls) == 2, calls  # was 5: one per layer (3 LLM + 2 ViT)
    torch.testing.assert_close(out.mse, ref.mse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.ce, ref.ce, atol=1e-5, rtol=1e-5)


def test_gqa_is_not_repeated():
    """sdpa attention with 2 query heads per KV head (training pack and cached blocks) repeats no K/V, and equals
    attention over explicitly repeated K/V."""
    from kv_count import KVCopyCounter

    spec = spec_from_splits(PACK["sample_lens"], PACK["split_lens"], PACK["modes"])
    q, k, v = _qkv(28, 28, h=4, hkv=2, seed=6)
    counter = KVCopyCounter(4, 2, 16)
    with counter:
        out = attention(q, k, v, spec, "sdpa")
    assert counter.repeats == 0
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    assert torch.equal(out, attention(q, kk, vv, spec, "sdpa"))
    from loom.model.attention import CachedBlocks, LayerKV, attention_cached

    # cached: block 0 has 5 cached keys and 3 causal new tokens, block 1 none and 4 full ones
    past = torch.randn(8, 2, 16), torch.randn(8, 2, 16)
    q2, k2, v2 = _qkv(7, 7, h=4, hkv=2, seed=7)
    blocks = CachedBlocks([3, 4], [5, 0], [True, False])
    with counter:
        o2, stored, _ = attention_cached(q2, k2, v2, blocks, LayerKV([past[0], None], [past[1], None]))
    assert counter.repeats == 0
    assert torch.equal(stored[0][0], k2[:3]) and stored[0][0].data_ptr() == past[0][5].data_ptr()  # in place
    ref = _cached_spec([5, 0], [3, 4], True)
    ref.q_mode[3:] = 1  # block 1 is full
    keys = torch.cat([past[0][:5], k2[:3], k2[3:]]).repeat_interleave(2, 1)
    vals = torch.cat([past[1][:5], v2[:3], v2[3:]]).repeat_interleave(2, 1)
    torch.testing.assert_close(o2, attention(q2, keys, vals, ref, "sdpa"), atol=1e-6, rtol=1e-6)
