"""Autoencoders and the latent token layout."""

from __future__ import annotations

import torch

from loom.model.configs import VAEConfig
from loom.model.vae import PixelAutoencoder, encode_to_tokens, patchify_latent, unpatchify_latent


def test_patchify_layout_and_inverse():
    lat = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    tok = patchify_latent(lat, 2)
    assert tok.shape == (6, 8)
    # token k = r*w + c; element (dy*2 + dx)*C + ch holds latent[ch, 2r+dy, 2c+dx]
    r, c, dy, dx, ch = 1, 2, 1, 0, 1
    assert tok[r * 3 + c, (dy * 2 + dx) * 2 + ch] == lat[ch, 2 * r + dy, 2 * c + dx]
    assert torch.equal(unpatchify_latent(tok, 2, 3, 2), lat)


def test_pixel_autoencoder_is_lossless():
    vae = PixelAutoencoder(VAEConfig(kind="pixel", z_channels=12, downsample=2))
    x = torch.rand(2, 3, 8, 12) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 12, 4, 6)
    assert torch.equal(vae.decode(z), x)


def test_padded_batch_encode_crops_each_image():
    vae = PixelAutoencoder(VAEConfig(kind="pixel", z_channels=12, downsample=2))
    a, b = torch.rand(3, 8, 12), torch.rand(3, 12, 8)
    ta, tb = encode_to_tokens(vae, [a, b], [(2, 3), (3, 2)], 2)
    assert torch.equal(ta, patchify_latent(vae.encode(a[None])[0], 2))
    assert torch.equal(tb, patchify_latent(vae.encode(b[None])[0], 2))
