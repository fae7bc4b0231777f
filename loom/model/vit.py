"""SigLIP NaViT vision tower as BAGEL uses it (bagel-spec §2.6, §5.3): variable-resolution images, per-image
attention, learned absolute position table indexed r·70 + c (extrapolated, never interpolated), Linear patch
embedding over (py, px, rgb) vectors, pre-LN encoder layers, post-LayerNorm, no pooling head.

Names match `vit_model.vision_model.*` of the release."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MaskSpec, attention
from .configs import ViTConfig


class SiglipAttention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_attention_heads, d // cfg.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: Tensor, spec: MaskSpec, backend: str) -> Tensor:
        n = x.shape[0]
        q, k, v = (p(x).view(n, self.num_heads, self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(attention(q, k, v, spec, backend).reshape(n, -1))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: Tensor, spec: MaskSpec, backend: str) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), spec, backend)
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        # Linear form of the Conv2d(3→D, k=p, s=p) patch embedding, as stored in the release (bagel-spec §1.1)
        self.patch_embedding = nn.Linear(3 * cfg.patch_size**2, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, patches: Tensor, position_ids: Tensor) -> Tensor:
        return self.patch_embedding(patches.to(self.patch_embedding.weight.dtype)) + self.position_embedding(position_ids)


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class SiglipVisionModel(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vision_model = SiglipVisionTransformer(cfg)

    def forward(self, patches: Tensor, position_ids: Tensor, seqlens: Tensor, backend: str = "sdpa") -> Tensor:
        """patches [N, 3p²], position_ids [N], seqlens [n_images] → features [N, D_vit] (post-LayerNorm)."""
        doc = torch.repeat_interleave(torch.arange(seqlens.numel(), device=patches.device), seqlens.to(patches.device))
        zeros = torch.zeros_like(doc)
        # one full split per image: per-image bidirectional attention (NaViT varlen)
        spec = MaskSpec(doc, zeros, doc, torch.ones_like(doc), doc, zeros, doc, torch.zeros_like(doc, dtype=torch.bool))
        vm = self.vision_model
        x = vm.embeddings(patches, position_ids)
        for layer in vm.encoder.layers:
            x = layer(x, spec, backend)
        return vm.post_layernorm(x)
