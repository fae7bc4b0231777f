"""Strict, loud loading: every key present, only the unused SigLIP layer tolerated, shapes checked."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from loom.model.weights import CheckpointError, config_from_release, load_bagel


def _copy(fixture_dir, tmp_path):
    dst = tmp_path / "rel"
    shutil.copytree(fixture_dir, dst)
    return dst, load_file(str(dst / "ema.safetensors"))


def test_config_overrides_from_release(fixture_dir):
    cfg = config_from_release(fixture_dir)
    assert cfg.vit.num_hidden_layers == 2  # JSON 3 − 1
    assert cfg.llm.qk_norm and cfg.llm.mot and cfg.llm.num_key_value_heads == 2
    assert (cfg.max_latent_size, cfg.vit_max_num_patch_per_side, cfg.latent_patch_size) == (16, 70, 2)
    assert cfg.vae.ch == 32 and cfg.vae.ch_mult == [1, 1, 1, 1] and cfg.vae.num_res_blocks == 1


def _flux_ae_without_encoder_blocks(ch: int = 8, z: int = 4) -> dict[str, torch.Tensor]:
    """FLUX-layout AE keys with num_res_blocks = 0 and ch_mult [1, 2]: the encoder has NO `down.{i}.block.*`
    (level 1 has no keys at all); the decoder has num_res_blocks + 1 = 1 block per level."""
    conv = lambda o, i: torch.zeros(o, i, 3, 3)  # noqa: E731
    return {
        "encoder.conv_in.weight": conv(ch, 3), "encoder.down.0.downsample.conv.weight": conv(ch, ch),
        "encoder.mid.block_1.conv1.weight": conv(ch, ch), "encoder.conv_out.weight": conv(2 * z, ch),
        "decoder.conv_in.weight": conv(2 * ch, z), "decoder.mid.block_1.conv1.weight": conv(2 * ch, 2 * ch),
        "decoder.up.1.block.0.conv1.weight": conv(2 * ch, 2 * ch), "decoder.up.1.block.0.conv2.weight": conv(2 * ch, 2 * ch),
        "decoder.up.1.upsample.conv.weight": conv(2 * ch, 2 * ch),
        "decoder.up.0.block.0.conv1.weight": conv(ch, 2 * ch), "decoder.up.0.block.0.conv2.weight": conv(ch, ch),
        "decoder.conv_out.weight": conv(3, ch),
    }


def test_vae_geometry_without_encoder_residual_blocks(tmp_path, fixture_dir):
    dst, _ = _copy(fixture_dir, tmp_path)
    ae = _flux_ae_without_encoder_blocks()
    save_file(ae, str(dst / "ae.safetensors"))
    vae = config_from_release(dst).vae
    assert (vae.ch, vae.ch_mult, vae.num_res_blocks, vae.z_channels, vae.downsample) == (8, [1, 2], 0, 4, 2)


@pytest.mark.parametrize("key", ["decoder.conv_in.weight", "encoder.conv_in.weight",
                                 "decoder.up.1.block.0.conv2.weight"])
def test_missing_vae_key_names_file_and_key(tmp_path, fixture_dir, key):
    dst, _ = _copy(fixture_dir, tmp_path)
    ae = _flux_ae_without_encoder_blocks()
    del ae[key]
    save_file(ae, str(dst / "ae.safetensors"))
    with pytest.raises(CheckpointError, match=f"ae.safetensors: missing key '{key}'"):
        config_from_release(dst)


def test_missing_config_key_names_file_and_key(tmp_path, fixture_dir):
    import json

    dst, _ = _copy(fixture_dir, tmp_path)
    d = json.loads((dst / "llm_config.json").read_text())
    del d["hidden_size"]
    (dst / "llm_config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="llm_config.json: missing key 'hidden_size'"):
        config_from_release(dst)


def test_loads_all_keys_and_zero_inits_temporal(bagel_tiny, fixture_dir):
    model, _, tok, _ = bagel_tiny
    sd = load_file(str(fixture_dir / "ema.safetensors"))
    for k, v in model.state_dict().items():
        if k == "temporal_embed.weight":
            assert float(v.abs().sum()) == 0.0
        else:
            assert torch.equal(v, sd[k]), k
    assert len(tok) == 507
    assert not model.latent_pos_embed.pos_embed.requires_grad


def test_missing_key_is_an_error(tmp_path, fixture_dir):
    dst, sd = _copy(fixture_dir, tmp_path)
    del sd["language_model.model.layers.1.self_attn.k_norm_moe_gen.weight"]
    save_file(sd, str(dst / "ema.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing keys: .*k_norm_moe_gen"):
        load_bagel(dst, verbose=False, with_vae=False, with_tokenizer=False)


def test_shape_mismatch_is_an_error(tmp_path, fixture_dir):
    dst, sd = _copy(fixture_dir, tmp_path)
    sd["connector.fc2.weight"] = torch.zeros(64, 32)
    save_file(sd, str(dst / "ema.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 shape mismatches: connector.fc2.weight: file \[64, 32\] vs model \[64, 64\]"):
        load_bagel(dst, verbose=False, with_vae=False, with_tokenizer=False)


def test_unexpected_key_is_an_error_but_unused_vit_layer_is_tolerated(tmp_path, fixture_dir, capsys):
    dst, sd = _copy(fixture_dir, tmp_path)
    load_bagel(dst, verbose=True, with_vae=False, with_tokenizer=False)
    assert "ignored 16 unused keys" in capsys.readouterr().out
    sd["language_model.model.layers.0.extra.weight"] = torch.zeros(3)
    save_file(sd, str(dst / "ema.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: language_model.model.layers.0.extra.weight"):
        load_bagel(dst, verbose=False, with_vae=False, with_tokenizer=False)


def test_vae_key_mismatch_is_an_error(tmp_path, fixture_dir):
    dst, _ = _copy(fixture_dir, tmp_path)
    ae = load_file(str(dst / "ae.safetensors"))
    del ae["decoder.up.0.block.1.conv1.weight"]
    save_file(ae, str(dst / "ae.safetensors"))
    with pytest.raises(CheckpointError, match="missing: decoder.up_blocks.3.resnets.1.conv1.weight"):
        load_bagel(dst, verbose=False, with_tokenizer=False)


def test_bf16_loading_keeps_dtype(fixture_dir):
    model, _, _, _ = load_bagel(fixture_dir, dtype=torch.bfloat16, verbose=False, with_vae=False,
                                with_tokenizer=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())
