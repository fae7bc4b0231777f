"""Localised entity CFG (Loom appendix A.1): masks from attention maps and the guided-velocity combination."""

import math

import pytest
import torch

from loom.infer.entity_cfg import (
    attention_to_mask,
    combine_entity_cfg,
    entity_attention_map,
    entity_scale_map,
    guided_velocity,
    mask_from_pixels,
    smooth_map,
)
from loom.infer.sampling import RENORM_TYPES, combine_cfg


def test_threshold_and_top_fraction():
    a = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])  # normalised: 0, .2, .4, .6, .8, 1
    assert attention_to_mask(a, 2, 3, threshold=0.5).tolist() == [False, False, False, True, True, True]
    assert attention_to_mask(a, 2, 3, top_fraction=0.33).tolist() == [False, False, False, False, True, True]
    heads = torch.stack([a, a.flip(0)])  # averaged over leading dims → constant map → no region
    assert not attention_to_mask(heads, 2, 3).any()
    with pytest.raises(ValueError):
        attention_to_mask(a, 2, 2)


def test_smoothing_removes_isolated_token():
    a = torch.zeros(5, 5)
    a[0:3, 0:3] = 1.0  # a 3x3 blob
    a[4, 4] = 1.0  # one isolated hot token
    raw = attention_to_mask(a.flatten(), 5, 5, threshold=0.5)
    smooth = attention_to_mask(a.flatten(), 5, 5, threshold=0.5, smooth=3)
    assert bool(raw[24]) and not bool(smooth[24])
    assert bool(smooth[6])  # blob centre survives
    box = smooth_map(torch.arange(9.0), 3, 3, 3)
    assert box[4].item() == pytest.approx(4.0)  # centre = mean of all nine
    assert box[0].item() == pytest.approx((0 + 0 + 1 + 0 + 0 + 1 + 3 + 3 + 4) / 9)  # replicate padding


def test_attention_map_matches_manual_softmax():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(4, 6, 8, generator=g), torch.randn(2, 10, 8, generator=g)  # GQA: 4 q heads, 2 kv heads
    got = entity_attention_map(q, k, [3, 7])
    kk = k.repeat_interleave(2, 0)
    p = torch.softmax(q @ kk.transpose(1, 2) / math.sqrt(8), -1)
    torch.testing.assert_close(got, p[:, :, [3, 7]].mean(dim=(0, 2)))
    masked = entity_attention_map(q, k, [3], key_mask=torch.arange(10) < 5)
    p5 = torch.softmax(q @ kk[:, :5].transpose(1, 2) / math.sqrt(8), -1)
    torch.testing.assert_close(masked, p5[:, :, 3].mean(0))


def test_pixel_mask_to_tokens():
    m = torch.zeros(32, 32, dtype=torch.bool)
    m[:16, :] = True  # top half
    m[16:20, :8] = True  # half of token (2, 0)
    tokens = mask_from_pixels(m, 4, 4)  # 8x8 pixels per token
    assert tokens.reshape(4, 4).tolist() == [[True] * 4, [True] * 4, [True, False, False, False], [False] * 4]
    assert not mask_from_pixels(m, 4, 4, min_coverage=0.51).reshape(4, 4)[2, 0]


def test_combination_numbers():
    vc = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    vu = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    mask = torch.tensor([True, False, True])
    out = combine_entity_cfg(vc, vu, scale=4.0, entity_scale=7.0, mask=mask)
    assert out.tolist() == [[7.0, 14.0], [9.0, 13.0], [23.0, 30.0]]  # 7x inside, 4x outside
    std = vu + 4.0 * (vc - vu)
    assert torch.equal(combine_entity_cfg(vc, vu, 4.0, 4.0, mask), std)  # s_entity = s: standard CFG
    assert torch.equal(combine_entity_cfg(vc, vu, 4.0, 9.0, torch.zeros(3, dtype=torch.bool)), std)
    soft = entity_scale_map(torch.tensor([0.0, 0.5, 1.0]), 2.0, 6.0)
    assert soft.tolist() == [2.0, 4.0, 6.0]
    ve = torch.tensor([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0]])  # branch without the entity text
    out3 = combine_entity_cfg(vc, vu, 4.0, 3.0, mask, v_no_entity=ve)
    assert out3.tolist() == [[4.0, 10.0], [9.0, 13.0], [14.0, 20.0]]  # + (3-1)(vc - ve) inside only
    assert torch.equal(combine_entity_cfg(vc, vu, 4.0, 1.0, mask, v_no_entity=ve), std)


def _branches(n: int = 64, d: int = 16):
    g = torch.Generator().manual_seed(0)
    v_c, v_t, v_i = (torch.randn(n, d, generator=g) for _ in range(3))
    return v_c, v_t + 0.5 * v_c, v_i + 0.5 * v_c


@pytest.mark.parametrize("renorm", RENORM_TYPES)
@pytest.mark.parametrize("img_scale", [1.0, 2.0])
def test_background_is_plain_cfg_for_every_renorm(renorm, img_scale):
    """Outside the entity region the guided velocity IS plain CFG (bit for bit), whatever the renorm; inside it is
    CFG at s_entity. Under `global` renorm the old single renorm rescaled the background too."""
    v_c, v_t, v_i = _branches()
    mask = torch.zeros(64, dtype=torch.bool)
    mask[:16] = True
    plain = combine_cfg(v_c, v_t, v_i, 4.0, img_scale, renorm)
    ent = combine_cfg(v_c, v_t, v_i, 8.0, img_scale, renorm)
    assert not torch.equal(plain[mask], ent[mask])
    v = guided_velocity(v_c, v_t, v_i, 4.0, img_scale, 8.0, mask, renorm)
    if renorm == "global":  # the old rule (mix the scales, then renorm once) moved the background
        s_map = entity_scale_map(mask, 4.0, 8.0)[:, None]
        mixed = v_t + s_map * (v_c - v_t)
        mixed = v_i + img_scale * (mixed - v_i) if img_scale > 1 else mixed
        old = mixed * (v_c.norm() / mixed.norm()).clamp(max=1.0)
        assert ((old - plain)[~mask].norm() / plain[~mask].norm()).item() > 0.05
    assert torch.equal(v[~mask], plain[~mask])
    assert torch.equal(v[mask], ent[mask])
    soft = torch.linspace(0, 1, 64)  # a soft mask blends the two fields; m = 0 is plain CFG exactly
    vs = guided_velocity(v_c, v_t, v_i, 4.0, img_scale, 8.0, soft, renorm)
    assert torch.equal(vs[0], plain[0]) and torch.allclose(vs[-1], ent[-1])
    torch.testing.assert_close(vs[32], plain[32] + soft[32] * (ent[32] - plain[32]))
    # no mask, no text branch, or s_entity = s: plain CFG
    assert torch.equal(guided_velocity(v_c, v_t, v_i, 4.0, img_scale, 4.0, mask, renorm), plain)
    assert torch.equal(guided_velocity(v_c, v_t, v_i, 4.0, img_scale, 8.0, None, renorm), plain)
    no_text = combine_cfg(v_c, None, v_i, 4.0, img_scale, renorm)
    assert torch.equal(guided_velocity(v_c, None, v_i, 4.0, img_scale, 8.0, mask, renorm), no_text)


def test_user_mask_is_saved_and_recorded(pipe, tiny_settings, tmp_path):
    """The mask that guided each frame is written beside it (white = s_entity) and named in result.json."""
    import json

    from infer_helpers import pattern_image
    from PIL import Image

    from loom.infer.output import write_result

    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # left half of the 2×2 token grid
    mask.save(tmp_path / "mask.png")
    res = pipe.run("compose", "The <model> of <image 1>", [pattern_image(1)],
                   tiny_settings(entity_scale=7.0, entity_mask=str(tmp_path / "mask.png")))
    write_result(res, tmp_path / "out")
    d = json.loads((tmp_path / "out" / "result.json").read_text())
    ent = d["steps"][0]["entity_cfg"]
    assert ent["mask_source"] == "user" and ent["coverage"] == 0.5 and d["entity_cfg"]["mask_source"] == "user"
    saved = Image.open(tmp_path / "out" / ent["mask_image"])
    assert saved.size == (32, 32) and saved.tobytes() == mask.tobytes()
