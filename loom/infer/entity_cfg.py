"""Localised entity CFG (Loom appendix A.1): a subject-specific guidance scale s_entity inside the entity's
region, ordinary guidance everywhere else ("keeping the background unchanged"). Pure functions; the sampler
wires them.

Region: where the latent tokens attend to the entity token(s). Under BAGEL's noise isolation the text never
attends to the noisy latents, so the map is the *latent queries' attention to the entity keys*,
A[i] = mean over heads / layers / entity tokens of softmax(q_i·K/√d)[entity] (`entity_attention_map`), or a
user-given mask (`mask_from_pixels`). `attention_to_mask` turns a map into a token mask on the h×w grid.

Combination over [N, Dl] velocities (token order r·w + c, as `patchify_latent`). The sampler uses
`guided_velocity`: plain CFG (with its renorm) outside the region, CFG at s_entity inside — so the background
is exactly what plain CFG gives, whatever the renorm type. `combine_entity_cfg` is the bare mixing rule:
  scale map   s(i) = s + m(i)·(s_entity − s)        m ∈ [0, 1] (hard or soft mask)
  plain       v = v_u + s(i)·(v_c − v_u)
  with a third branch v_e (conditional context without the entity text, loom-reference-code §5.5):
              v = v_u + s·(v_c − v_u) + m(i)·(s_entity − 1)·(v_c − v_e)
s_entity = s (or 1 with the third branch), or an empty mask, gives back standard CFG exactly.

`EntityGuidance` is what the sampler (`Engine.generate_image(entity=…)`) takes: a given mask, or the entity
token positions in the conditional context plus the layers / step / threshold to derive it from attention
(captured through the opt-in `Attention.capture` of `loom.model.mot`); the sampler records the map and the mask
it used back on the object.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .sampling import combine_cfg


def entity_attention_map(q: Tensor, k: Tensor, entity_positions: list[int] | Tensor,
                         key_mask: Tensor | None = None) -> Tensor:
    """Attention mass each latent query puts on the entity keys.

    q [H, N, d] latent-token queries (after RoPE / QK-norm); k [Hk, L, d] all keys they attend to (Hk divides
    H, GQA); entity_positions: indices into L; key_mask [L] bool of keys the queries may see (None = all).
    Returns [N] = mean over heads and entity tokens of softmax(q·kᵀ/√d) at the entity columns."""
    h, hk = q.shape[0], k.shape[0]
    if h % hk:
        raise ValueError(f"{h} query heads are not a multiple of {hk} key heads")
    pos = torch.as_tensor(entity_positions, dtype=torch.long, device=q.device)
    if pos.numel() == 0:
        raise ValueError("no entity positions given")
    group, n, length = h // hk, q.shape[1], k.shape[1]
    # heads in chunks so that at most ~2^26 logits live at once (28 heads × 4096 latents × 10k keys otherwise)
    chunk = max(1, min(h, (1 << 26) // max(1, n * length)))
    total = torch.zeros(n, dtype=torch.float32, device=q.device)
    for h0 in range(0, h, chunk):
        heads = torch.arange(h0, min(h, h0 + chunk), device=q.device)
        kk = k[heads // group].float()
        logits = torch.einsum("hnd,hld->hnl", q[heads].float(), kk) / math.sqrt(q.shape[-1])
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask.to(logits.device)[None, None], float("-inf"))
        total += logits.softmax(-1)[:, :, pos].sum(dim=(0, 2))
    return total / (h * pos.numel())


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


def guided_velocity(v_c: Tensor, v_t: Tensor | None, v_i: Tensor | None, s_t: float, s_i: float,
                    entity_scale: float, mask: Tensor | None, renorm_type: str = "global", renorm_min: float = 0.0,
                    bagel_compat: bool = False) -> Tensor:
    """`combine_cfg` with the text guidance localised: outside `mask` the result IS plain CFG at s_t (every renorm
    type), inside it is CFG at s_entity, blended by the mask value m ∈ [0, 1]:

        v = v_plain + m·(v_entity − v_plain),  v_plain = combine_cfg(s_t), v_entity = combine_cfg(s_entity)

    Each field gets BAGEL's image CFG and renorm on its own. Renorming once after mixing the scales (as before)
    couples the two under `global` renorm: a stronger region shrinks the one norm ratio and so rescales the
    background too (relative background change 0.28 in tests/infer/test_entity_cfg.py: s_t 4, s_entity 8, a
    quarter of the tokens), which breaks "keeping the background unchanged" (Loom appendix A.1). Without a text branch (outside the CFG interval, or no
    CFG-eligible text), without a mask, or with s_entity = s_t it is exactly `combine_cfg`."""
    plain = combine_cfg(v_c, v_t, v_i, s_t, s_i, renorm_type, renorm_min, bagel_compat)
    if mask is None or v_t is None or s_t <= 1.0 or entity_scale == s_t:
        return plain
    m = mask.to(device=v_c.device, dtype=plain.dtype).reshape(-1, 1)
    if m.shape[0] != plain.shape[0]:
        raise ValueError(f"entity mask has {m.shape[0]} tokens, the velocity {plain.shape[0]}")
    v_entity = combine_cfg(v_c, v_t, v_i, entity_scale, s_i, renorm_type, renorm_min, bagel_compat)
    return torch.where(m >= 1, v_entity, torch.where(m > 0, plain + m * (v_entity - plain), plain))


@dataclass
class EntityGuidance:
    """Localised entity CFG for one sampled image.

    Either `mask` ([h·w] bool or [0, 1], a user mask) or `positions` (entity-token indices into the conditional
    context's keys): the sampler then captures the latent queries' attention to those keys in `layers` (None =
    all) at denoising steps 0..`step`, keeps the running mean over heads / layers / tokens / steps and turns it
    into the mask with `attention_to_mask(threshold, top_fraction, smooth)`. The mask guides every step from the
    one it was computed at (ordinary CFG before); the capture rides on the conditional branch of the step's one
    batched forward, so no extra LLM pass is run. After sampling, `attention` / `used_mask` hold what was used."""

    scale: float
    mask: Tensor | None = None
    positions: list[int] | None = None
    layers: tuple[int, ...] | None = None
    step: int = 0
    threshold: float | None = 0.5
    top_fraction: float | None = None
    smooth: int = 1
    tags: tuple[str, ...] = ()  # for reports
    context_len: int | None = None  # key length `positions` were computed for (checked against the context)
    attention: Tensor | None = field(default=None, repr=False)
    used_mask: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mask is None and not self.positions:
            raise ValueError("entity guidance needs a mask or entity token positions")
        if self.step < 0:
            raise ValueError(f"entity capture step must be ≥ 0, got {self.step}")

    @property
    def source(self) -> str:
        return "user" if self.mask is not None else "attention"

    def report(self) -> dict:
        """JSON-ready summary: mask source, coverage (fraction of latent tokens inside), what defined it."""
        m = self.used_mask if self.used_mask is not None else self.mask
        d: dict = {"mask_source": self.source, "entity_scale": self.scale,
                   "coverage": round(float(m.float().mean()), 6) if m is not None else None}
        if self.source == "attention":
            d.update(tokens=list(self.tags), num_token_positions=len(self.positions or []),
                     layers=list(self.layers) if self.layers is not None else "all", step=self.step,
                     threshold=self.threshold, top_fraction=self.top_fraction, smooth=self.smooth)
        return d


def parse_layers(spec: str | list[int] | tuple[int, ...] | None, num_layers: int) -> tuple[int, ...] | None:
    """"all" / None → None (every layer); "8-20,24" → (8, …, 20, 24); negative indices count from the end."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return None
    items: list[int] = []
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    for part in parts:
        if isinstance(part, str):
            part = part.strip()
            m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
            if m:
                a, b = (int(x) % num_layers if int(x) < 0 else int(x) for x in m.groups())
                items.extend(range(a, b + 1))
                continue
            if not re.fullmatch(r"-?\d+", part):
                raise ValueError(f"entity layers: cannot read {part!r} (use e.g. all, 8-20 or 4,5,6)")
        i = int(part)
        items.append(i % num_layers if i < 0 else i)
    bad = [i for i in items if not 0 <= i < num_layers]
    if bad or not items:
        raise ValueError(f"entity layers {spec!r}: the model has layers 0..{num_layers - 1}")
    return tuple(sorted(set(items)))


def tag_token_positions(tok, ids: list[int], tags: list[str] | tuple[str, ...]) -> list[int]:
    """Indices into `ids` of the tokens that spell any of `tags` (a registered entity token is one token; an
    unregistered tag is several pieces, all of which are returned)."""
    pieces = [tok.decode([i]) for i in ids]
    starts, off = [], 0
    for p in pieces:
        starts.append(off)
        off += len(p)
    text = "".join(pieces)
    out: set[int] = set()
    for tag in tags:
        for m in re.finditer(re.escape(tag), text):
            out.update(j for j, (a, p) in enumerate(zip(starts, pieces)) if a < m.end() and a + len(p) > m.start())
    return sorted(out)
