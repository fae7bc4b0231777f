"""Pure sampling functions: CFG mixing with BAGEL's renorm variants, the CFG-interval test and token sampling.
The denoising loop that drives them is `Engine.generate_image`; the flow schedule is `loom.model.flow`."""

from __future__ import annotations

import torch
from torch import Tensor

RENORM_TYPES = ("global", "channel", "text_channel")


def cfg_active(t: float, interval: tuple[float, float]) -> bool:
    """BAGEL applies CFG at step i iff lo < t_i <= hi, on the *shifted* t (bagel-spec §7.3)."""
    return interval[0] < t <= interval[1]


def _renorm(v_cond: Tensor, v: Tensor, per_token: bool, renorm_min: float) -> Tensor:
    if per_token:
        scale = v_cond.norm(dim=-1, keepdim=True) / (v.norm(dim=-1, keepdim=True) + 1e-8)
    else:
        scale = v_cond.norm() / (v.norm() + 1e-8)
    return v * scale.clamp(min=renorm_min, max=1.0)


def combine_cfg(v_cond: Tensor, v_text_uncond: Tensor | None, v_img_uncond: Tensor | None, text_scale: float,
                img_scale: float, renorm_type: str = "global", renorm_min: float = 0.0,
                bagel_compat: bool = False) -> Tensor:
    """Classifier-free guidance over [N, Dl] velocities, exactly as BAGEL combines them.

    global / channel: v' = v_t + s_t(v_c − v_t); v' = v_i + s_i(v' − v_i); v' ·= clamp(‖v_c‖/‖v'‖, min, 1)
    text_channel:     v'' = v_t + s_t(v_c − v_t), renormed per token; then v = v_i + s_i(v'' − v_i), no renorm.
    BAGEL skips *all* guidance when s_t ≤ 1, silently dropping image CFG; loom applies image CFG on its own
    unless `bagel_compat=True` (kept for parity with the official numbers).
    """
    if renorm_type not in RENORM_TYPES:
        raise ValueError(f"unknown cfg_renorm_type {renorm_type!r}; choose from {RENORM_TYPES}")
    use_text = text_scale > 1.0 and v_text_uncond is not None
    use_img = img_scale > 1.0 and v_img_uncond is not None
    if bagel_compat and not use_text:
        return v_cond
    if not use_text and not use_img:
        return v_cond
    v = v_text_uncond + text_scale * (v_cond - v_text_uncond) if use_text else v_cond
    if renorm_type == "text_channel":
        if use_text:
            v = _renorm(v_cond, v, per_token=True, renorm_min=renorm_min)
        if use_img:
            v = v_img_uncond + img_scale * (v - v_img_uncond)
        return v
    if use_img:
        v = v_img_uncond + img_scale * (v - v_img_uncond)
    return _renorm(v_cond, v, per_token=renorm_type == "channel", renorm_min=renorm_min)


def sample_token(logits: Tensor, temperature: float = 0.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> int:
    """Greedy when temperature is 0; otherwise softmax(logits/T) restricted to the top-p nucleus."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
