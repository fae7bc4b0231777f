"""Localised entity CFG (Loom appendix A.1): a subject-specific guidance scale s_entity inside the entity's
region, ordinary guidance everywhere else ("keeping the background unchanged"). Pure functions; the sampler
wires them.

Region: where the latent tokens attend to the entity token(s). Under BAGEL's noise isolation the text never
attends to the noisy latents, so the map is the *latent queries' attention to the entity keys*,
A[i] = mean over heads / layers / entity tokens of softmax(q_i·K/√d)[entity] (`entity_attention_map`), or a
user-given mask (`mask_from_pixels`). `attention_to_mask` turns a map into a token mask on the h×w grid.

Combination over [N, Dl] velocities (token order r·w + c, as `patchify_latent`):
  scale map   s(i) = s + m(i)·(s_entity − s)        m ∈ [0, 1] (hard or soft mask)
  plain       v = v_u + s(i)·(v_c − v_u)
  with a third branch v_e (conditional context without the entity text, loom-reference-code §5.5):
              v = v_u + s·(v_c − v_u) + m(i)·(s_entity − 1)·(v_c − v_e)
s_entity = s (or 1 with the third branch), or an empty mask, gives back standard CFG exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def entity_attention_map(q: Tensor, k: Tensor, entity_positions: list[int] | Tensor,
                         key_mask: Tensor | None = None) -> Tensor:
    """Attention mass each latent query puts on the entity keys.

    q [H, N, d] latent-token queries (after RoPE / QK-norm); k [Hk, L, d] all keys they attend to (Hk divides
    H, GQA); entity_positions: indices into L; key_mask [L] bool of keys the queries may see (None = all).
    Returns [N] = mean over heads and entity tokens of softmax(q·kᵀ/√d) at the entity columns."""
    h, hk = q.shape[0], k.shape[0]
    if h % hk:
        raise ValueError(f"{h} query heads are not a multiple of {hk} key heads")
    k = k.repeat_interleave(h // hk, dim=0)
    logits = torch.einsum("hnd,hld->hnl", q.float(), k.float()) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask.to(logits.device)[None, None], float("-inf"))
    probs = logits.softmax(-1)
    pos = torch.as_tensor(entity_positions, dtype=torch.long, device=probs.device)
    if pos.numel() == 0:
        raise ValueError("no entity positions given")
    return probs[:, :, pos].mean(dim=(0, 2))


def smooth_map(a: Tensor, h: int, w: int, kernel: int = 3) -> Tensor:
    """Box-blur an [h·w] map on its h×w grid (odd `kernel`, replicate padding): removes isolated tokens."""
    if kernel <= 1:
        return a
    if kernel % 2 == 0:
        raise ValueError(f"smoothing kernel must be odd, got {kernel}")
    x = a.float().reshape(1, 1, h, w)
    x = F.pad(x, (kernel // 2,) * 4, mode="replicate")
    return F.avg_pool2d(x, kernel, stride=1).reshape(h * w)


def attention_to_mask(attn: Tensor, h: int, w: int, threshold: float | None = 0.5,
                      top_fraction: float | None = None, smooth: int = 1) -> Tensor:
    """[..., h·w] attention map(s) → [h·w] bool token mask.

    Leading dims (heads, layers, entity tokens) are averaged; the map is optionally box-smoothed, min–max
    normalised to [0, 1], then either thresholded (`threshold`, on the normalised map) or cut to the
    `top_fraction` highest tokens (ceil(f·h·w), ties broken by index). Exactly one criterion is used:
    `top_fraction` wins when given. A constant map gives an empty mask (no evidence of a region)."""
    if attn.shape[-1] != h * w:
        raise ValueError(f"attention map has {attn.shape[-1]} entries, grid is {h}x{w}")
    a = attn.float().reshape(-1, h * w).mean(0)
    a = smooth_map(a, h, w, smooth)
    lo, hi = a.min(), a.max()
    if float(hi - lo) <= 1e-12:
        return torch.zeros(h * w, dtype=torch.bool, device=a.device)
    a = (a - lo) / (hi - lo)
    if top_fraction is not None:
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        n = math.ceil(top_fraction * h * w)
        mask = torch.zeros(h * w, dtype=torch.bool, device=a.device)
        mask[torch.argsort(-a, stable=True)[:n]] = True
        return mask
    if threshold is None:
        raise ValueError("give a threshold or a top_fraction")
    return a >= threshold


def mask_from_pixels(mask: Tensor, h: int, w: int, min_coverage: float = 0.5) -> Tensor:
    """A user mask [H, W] (bool or [0, 1]; H = s·h, W = s·w pixels) → [h·w] bool: a token is inside when
    at least `min_coverage` of its s×s pixels are."""
    m = mask.float()
    if m.shape[0] % h or m.shape[1] % w:
        raise ValueError(f"mask {tuple(m.shape)} is not a multiple of the {h}x{w} token grid")
    cov = F.adaptive_avg_pool2d(m[None, None], (h, w)).reshape(h * w)
    return cov >= min_coverage


def entity_scale_map(mask: Tensor, scale: float, entity_scale: float) -> Tensor:
    """[N] per-token guidance scale: `entity_scale` inside the (hard or soft) mask, `scale` outside."""
    m = mask.float()
    return scale + m * (entity_scale - scale)


def combine_entity_cfg(v_cond: Tensor, v_uncond: Tensor, scale: float, entity_scale: float, mask: Tensor,
                       v_no_entity: Tensor | None = None) -> Tensor:
    """Localised CFG over [N, Dl] velocities with an [N] mask (formulas in the module docstring).

    Without `v_no_entity` the entity region is guided against the same unconditional branch with its own
    scale; with it, an extra entity term (v_c − v_e) is added inside the region only."""
    if v_cond.shape != v_uncond.shape or mask.shape[0] != v_cond.shape[0]:
        raise ValueError(f"shapes: v_cond {tuple(v_cond.shape)}, v_uncond {tuple(v_uncond.shape)}, "
                         f"mask {tuple(mask.shape)}")
    m = mask.to(v_cond.dtype).unsqueeze(-1)
    if v_no_entity is None:
        s = entity_scale_map(mask, scale, entity_scale).to(v_cond.dtype).unsqueeze(-1)
        return v_uncond + s * (v_cond - v_uncond)
    return v_uncond + scale * (v_cond - v_uncond) + m * (entity_scale - 1.0) * (v_cond - v_no_entity)
