"""Shared leaf modules: RMSNorm, SwiGLU MLP, rotary helpers, the 2-D sin-cos tables and the timestep embedder.

Numerics follow the official code exactly (bagel-spec §2.5, §5.4, §5.5, §8.3) because the tiny fixture is
compared at 1e-4.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Qwen2 RMSNorm: variance in fp32, normalised value cast back to the input dtype, then × weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class SwiGLU(nn.Module):
    """Qwen2 MLP: down(silu(gate(x)) · up(x)); no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Qwen2 "default" RoPE tables for `position_ids` [L] → cos, sin [L, head_dim].

    Angles in fp32 (autocast off), halves concatenated, then cast to the hidden dtype as the official code does.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim))
    with torch.autocast(device_type=position_ids.device.type, enabled=False):
        ang = position_ids.float()[:, None] * inv_freq[None, :]
        emb = torch.cat([ang, ang], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE. x [L, heads, d]; cos/sin [L, d]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def sincos_2d_table(dim: int, grid: int) -> np.ndarray:
    """BAGEL's fixed 2-D sin-cos table [grid², dim] (float64 → float32).

    Row r·grid + c holds [sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)] with ω_k = 10000^(−k/(dim/4)): the first half
    encodes the column — the DiT meshgrid(w, h) quirk (bagel-spec §5.4).
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def enc(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([enc(cols), enc(rows)], axis=1).astype(np.float32)


class PositionEmbedding(nn.Module):
    """Frozen 2-D sin-cos table stored as a Parameter (`pos_embed`) so the release's key loads as is."""

    def __init__(self, grid: int, dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_2d_table(dim, grid)), requires_grad=False)

    def reset_table(self) -> None:
        """Recompute the table (after meta-device construction, or when a checkpoint lacks it)."""
        with torch.no_grad():
            self.pos_embed.copy_(torch.from_numpy(sincos_2d_table(self.pos_embed.shape[1], self.grid)))

    def forward(self, position_ids: Tensor) -> Tensor:
        return self.pos_embed[position_ids]


class TimestepEmbedder(nn.Module):
    """256-d sinusoid of the flow time t ∈ [0, 1] ([cos, sin] order, no ×1000) → Linear → SiLU → Linear."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def sinusoid(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: Tensor) -> Tensor:
        freq = self.sinusoid(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class ConnectorMLP(nn.Module):
    """ViT → LLM connector: fc1 → GELU(tanh) → fc2."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
