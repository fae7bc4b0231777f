"""Frozen autoencoders: the FLUX.1 autoencoder as a diffusers `AutoencoderKL`, and a lossless space-to-depth
"pixel" autoencoder for tiny synthetic models. Plus the latent-token (un)patchify used by BAGEL.

Latent scaling (FLUX): latent = scale · (mean − shift); decode input = latent / scale + shift. Encoding uses the
posterior mean (the official code samples it; the mean makes runs reproducible — see the fixture README).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import VAEConfig


class FluxAutoencoder(nn.Module):
    """Wraps diffusers' AutoencoderKL with FLUX's layout (no quant convs, 16 latent channels)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        n = len(cfg.ch_mult)
        self.cfg = cfg
        self.ae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=cfg.z_channels,
            block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult), layers_per_block=cfg.num_res_blocks,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            act_fn="silu", norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
            mid_block_add_attention=True, scaling_factor=cfg.scale_factor, shift_factor=cfg.shift_factor,
        )
        self.downsample = 2 ** (n - 1)
        self.z_channels = cfg.z_channels

    def moments(self, x: Tensor) -> Tensor:
        """Raw encoder output [B, 2C, H/8, W/8] (mean ‖ logvar)."""
        return self.ae.encoder(x)

    def encode(self, x: Tensor) -> Tensor:
        """Images [B, 3, H, W] in [-1, 1] → scaled latents [B, C, H/8, W/8] (posterior mean)."""
        mean = self.moments(x)[:, : self.z_channels]
        return self.cfg.scale_factor * (mean - self.cfg.shift_factor)

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents → raw decoder output [B, 3, H, W] (≈ [-1, 1])."""
        return self.ae.decoder(z / self.cfg.scale_factor + self.cfg.shift_factor)


class PixelAutoencoder(nn.Module):
    """Lossless space-to-depth "autoencoder": [3, H, W] ↔ [3f², H/f, W/f]. No weights; exact inverse."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        if cfg.z_channels != 3 * cfg.downsample**2:
            raise ValueError(f"pixel autoencoder: z_channels must be 3·downsample² = {3 * cfg.downsample**2}")
        self.downsample = cfg.downsample
        self.z_channels = cfg.z_channels

    def encode(self, x: Tensor) -> Tensor:
        return F.pixel_unshuffle(x, self.downsample)

    def decode(self, z: Tensor) -> Tensor:
        return F.pixel_shuffle(z, self.downsample)


def build_autoencoder(cfg: VAEConfig) -> nn.Module:
    if cfg.kind == "flux":
        return FluxAutoencoder(cfg)
    if cfg.kind == "pixel":
        return PixelAutoencoder(cfg)
    raise ValueError(f"unknown autoencoder kind {cfg.kind!r} (flux / pixel)")


def patchify_latent(latent: Tensor, p: int) -> Tensor:
    """[C, p·h, p·w] → [h·w, p·p·C]; token k = r·w + c, element (dy·p + dx)·C + ch (bagel-spec §2.1)."""
    c, hh, ww = latent.shape
    h, w = hh // p, ww // p
    return latent.reshape(c, h, p, w, p).permute(1, 3, 2, 4, 0).reshape(h * w, p * p * c)


def unpatchify_latent(tokens: Tensor, h: int, w: int, p: int) -> Tensor:
    """Exact inverse of `patchify_latent`: [h·w, p·p·C] → [C, p·h, p·w]."""
    c = tokens.shape[1] // (p * p)
    return tokens.reshape(h, w, p, p, c).permute(4, 0, 2, 1, 3).reshape(c, h * p, w * p)


@torch.no_grad()
def encode_to_tokens(vae: nn.Module, images: list[Tensor], shapes: list[tuple[int, int]], p: int) -> list[Tensor]:
    """BAGEL's training encode: zero-pad every image (bottom/right) to the pack's max H, W, encode ONE batch,
    crop each latent back to its own grid, patchify. Borders see the padding — the official quirk the
    fixture reproduces (bagel-spec §5.2)."""
    if not images:
        return []
    hmax, wmax = max(x.shape[1] for x in images), max(x.shape[2] for x in images)
    batch = torch.stack([F.pad(x, (0, wmax - x.shape[2], 0, hmax - x.shape[1])) for x in images])
    lat = vae.encode(batch)
    return [patchify_latent(lat[i, :, : h * p, : w * p], p) for i, (h, w) in enumerate(shapes)]


def decoded_to_uint8(img: Tensor) -> Tensor:
    """Decoder output [3, H, W] → uint8 [H, W, 3] with truncation (not rounding), as the official code."""
    return ((img * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0)


# ---- FLUX (original) → diffusers key converter -------------------------------------------------------------

def _convert_flux_key(key: str, num_levels: int) -> str:
    k = key
    k = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", k)
    k = re.sub(r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.", k)
    k = re.sub(r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm.", k)
    for src, dst in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        k = re.sub(rf"^(encoder|decoder)\.mid\.attn_1\.{src}\.", rf"\1.mid_block.attentions.0.{dst}.", k)
    k = re.sub(r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.", k)
    k = re.sub(r"^encoder\.down\.(\d+)\.downsample\.conv\.", r"encoder.down_blocks.\1.downsamplers.0.conv.", k)
    # the FLUX decoder lists levels from lowest resolution up; diffusers lists up_blocks in execution order
    k = re.sub(r"^decoder\.up\.(\d+)\.block\.(\d+)\.",
               lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}.", k)
    k = re.sub(r"^decoder\.up\.(\d+)\.upsample\.conv\.",
               lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv.", k)
    k = k.replace(".nin_shortcut.", ".conv_shortcut.")
    return k


def convert_flux_vae_state_dict(sd: dict[str, Tensor], num_levels: int) -> dict[str, Tensor]:
    """Map `ae.safetensors` (FLUX naming) onto diffusers' AutoencoderKL names. Attention q/k/v/proj are 1×1
    convs in FLUX and Linear layers in diffusers, so their weights lose the two trailing unit dims."""
    out = {}
    for key, val in sd.items():
        new = _convert_flux_key(key, num_levels)
        if "mid_block.attentions.0.to_" in new and new.endswith(".weight") and val.dim() == 4:
            val = val[:, :, 0, 0]
        out[new] = val
    return out
