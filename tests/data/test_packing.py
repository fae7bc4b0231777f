"""Packing: token layout, RoPE ids of every item kind, loss sets, CFG dropout gaps, transforms."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from loom.data.packing import CondDropout, PackGeometry, pack_sequences
from loom.data.tokenizer import SpecialTokens
from loom.data.transforms import ImageTransform, patchify_image, resize_size
from loom.data.types import PlanItem, SequencePlan

T = SpecialTokens(bos=501, eos=502, start_of_image=503, end_of_image=504)
GEO = PackGeometry(vit_patch=14, vit_grid=70, latent_stride=16, latent_grid=16)


def img(h, w):
    return torch.zeros(3, h, w)


def test_edit_sample_layout_matches_spec_example():
    """bagel-spec §3.4 worked example: clean VAE, ViT, instruction, noisy target."""
    plan = SequencePlan([
        PlanItem("vae_image", image=img(32, 48)), PlanItem("vit_image", image=img(28, 28)),
        PlanItem("text", text_ids=[7, 8, 9]), PlanItem("vae_image", image=img(32, 32), loss=True, timestep_logit=0.0),
    ])
    b = pack_sequences([plan], T, GEO)
    assert b.split_lens == [8, 6, 5, 6] and b.attn_modes == ["full", "full", "causal", "noise"]
    assert b.packed_position_ids.tolist() == [0] * 8 + [1] * 6 + [2, 3, 4, 5, 6] + [7] * 6
    assert b.packed_vae_token_indexes.tolist() == list(range(1, 7)) + list(range(20, 24))
    assert b.packed_vit_token_indexes.tolist() == list(range(9, 13))
    assert b.mse_loss_indexes.tolist() == list(range(20, 24))
    assert b.packed_latent_position_ids[:6].tolist() == [0, 1, 2, 16, 17, 18]
    assert b.packed_vit_position_ids.tolist() == [0, 1, 70, 71]
    assert torch.isinf(b.packed_timestep_logits[:6]).all() and (b.packed_timestep_logits[6:] == 0).all()
    # markers are text tokens at the block edges
    assert b.packed_text_ids[:2].tolist() == [503, 504] and b.packed_text_indexes[:2].tolist() == [0, 7]


def test_text_loss_labels_and_weights():
    plan = SequencePlan([PlanItem("text", text_ids=[5, 6, 7], loss=True),
                         PlanItem("text", text_ids=[9], special_token_label=77)])
    b = pack_sequences([plan], T, GEO)
    assert b.ce_loss_indexes.tolist() == [0, 1, 2, 3, 7]
    assert b.packed_label_ids.tolist() == [5, 6, 7, 502, 77]
    assert torch.allclose(b.ce_loss_weights, torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0]))


def test_noisy_target_does_not_advance_rope_and_clean_copy_reuses_it():
    plan = SequencePlan([PlanItem("text", text_ids=[1]),
                         PlanItem("vae_image", image=img(16, 16), loss=True, timestep_logit=1.0),
                         PlanItem("vae_image", image=img(16, 16)), PlanItem("vit_image", image=img(14, 14)),
                         PlanItem("text", text_ids=[2])])
    b = pack_sequences([plan], T, GEO)
    assert b.packed_position_ids.tolist() == [0, 1, 2] + [3] * 3 + [3] * 3 + [4] * 3 + [5, 6, 7]


def test_several_samples_restart_rope_and_record_lengths():
    p = SequencePlan([PlanItem("text", text_ids=[1, 2])])
    b = pack_sequences([p, p], T, GEO)
    assert b.sample_lens == [4, 4] and b.packed_position_ids.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_cfg_dropout_gaps():
    items = [PlanItem("text", text_ids=[1], enable_cfg=True), PlanItem("vit_image", image=img(14, 14), enable_cfg=True),
             PlanItem("text", text_ids=[2])]
    b = pack_sequences([SequencePlan(items)], T, GEO, CondDropout(text=1.0, vit=1.0), random.Random(0))
    # dropped text leaves no gap, the dropped image still advances rope by 1
    assert b.packed_position_ids.tolist() == [1, 2, 3]
    b = pack_sequences([SequencePlan(items)], T, GEO, CondDropout(text=0.0, vit=0.0), random.Random(0))
    assert b.sequence_length == 3 + 3 + 3


def test_bad_image_size_names_the_sample():
    plan = SequencePlan([PlanItem("vae_image", image=img(20, 16))], source="m.jsonl:3")
    with pytest.raises(ValueError, match=r"m.jsonl:3: VAE image of size 20x16 is not a multiple of 16"):
        pack_sequences([plan], T, GEO)


def test_resize_rule_half_to_even_and_area_quirk():
    assert resize_size(64, 48, 96, 64, 16) == (80, 64)
    assert resize_size(72, 72, 1024, 16, 16) == (64, 64)  # 72/16 = 4.5 → 4 (round half to even)
    assert resize_size(112, 80, 84, 42, 14, 5000) == (84, 56)
    # max_pixels multiplies each side by the area ratio (official quirk)
    w, h = resize_size(1000, 1000, 1024, 512, 16, max_pixels=500_000)
    assert (w, h) == (512, 512)  # a square-root rule would give 704


def test_transform_and_patchify_order():
    im = Image.new("RGBA", (30, 30), (255, 0, 0, 0))  # fully transparent → white
    x = ImageTransform(28, 28, 14)(im)
    assert x.shape == (3, 28, 28) and torch.allclose(x, torch.ones_like(x))
    t = torch.arange(3 * 28 * 28, dtype=torch.float32).reshape(3, 28, 28)
    p = patchify_image(t, 14)
    assert p.shape == (4, 588) and p[1, (2 * 14 + 5) * 3 + 1] == t[1, 2, 14 + 5]
