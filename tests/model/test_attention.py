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
