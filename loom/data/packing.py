"""Sequence plans → one `PackedBatch` (bagel-spec §3.2). Masks, RoPE ids and loss index sets are built here once.

Per sample (rope starts at 0, `curr` is the global offset):
  text      `<|im_start|> ids <|im_end|>`  causal, rope consecutive, += len+2; CE on `<|im_start|>`+ids → ids+`<|im_end|>`
  vit_image `<vs> N patches <ve>`          full, one shared rope id, += 1
  vae_image `<vs> h·w latents <ve>`        clean: full, t = 0, rope += 1 │ target: noise, t ~ logit-normal, rope += 0
CFG dropout (items with enable_cfg): dropped text leaves no gap; dropped images still advance rope by 1.
  per item        each eligible item independently (BAGEL's text / vit / vae probabilities);
  whole condition per sample, one draw u: u < whole_text drops ALL eligible texts, else u < whole_text +
                  whole_image drops ALL eligible images, and nothing else is dropped — exactly the
                  text-unconditional / image-unconditional contexts the inference CFG branches build
                  (`loom.infer.loop.ItemContexts.drop`), which per-item dropout almost never produces (a
                  tutorial frame with 10 image items: 0.3^10 ≈ 6e-6).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import Tensor

from .tokenizer import SpecialTokens
from .transforms import grid_position_ids, patchify_image
from .types import PackedBatch, SequencePlan


@dataclass(frozen=True)
class PackGeometry:
    """Model geometry the packer needs (from `LoomConfig`)."""

    vit_patch: int = 14
    vit_grid: int = 70  # vit_max_num_patch_per_side
    latent_stride: int = 16  # pixels per latent token = VAE downsample × latent patch
    latent_grid: int = 64  # max_latent_size

    @classmethod
    def from_config(cls, cfg) -> PackGeometry:
        return cls(cfg.vit.patch_size, cfg.vit_max_num_patch_per_side, cfg.pixels_per_latent_token, cfg.max_latent_size)


@dataclass(frozen=True)
class CondDropout:
    """Probabilities of dropping CFG-eligible items: per item (BAGEL model defaults 0.1 / 0.3 / 0.3) and per
    sample, all texts / all images together (mutually exclusive; see the module docstring)."""

    text: float = 0.0
    vit: float = 0.0
    vae: float = 0.0
    whole_text: float = 0.0
    whole_image: float = 0.0

    def __post_init__(self) -> None:
        probs = (self.text, self.vit, self.vae, self.whole_text, self.whole_image)
        if not all(0.0 <= p <= 1.0 for p in probs) or self.whole_text + self.whole_image > 1.0:
            raise ValueError(f"condition dropout probabilities must lie in [0, 1] with whole_text + whole_image "
                             f"≤ 1, got {self}")

    @property
    def whole(self) -> bool:
        """Whether a sample draws one whole-condition number (before its per-item draws)."""
        return self.whole_text > 0 or self.whole_image > 0

    def whole_mode(self, u: float) -> str | None:
        """"text" / "image" (what the sample drops entirely) or None (per-item dropout) for a draw u ∈ [0, 1)."""
        if u < self.whole_text:
            return "text"
        return "image" if u < self.whole_text + self.whole_image else None


class _Builder:
    def __init__(self) -> None:
        self.text_ids: list[int] = []
        self.text_idx: list[int] = []
        self.pos: list[int] = []
        self.split_lens: list[int] = []
        self.modes: list[str] = []
        self.vit_tokens: list[Tensor] = []
        self.vit_lens: list[int] = []
        self.vit_pos: list[Tensor] = []
        self.vit_idx: list[int] = []
        self.vit_frames: list[int] = []
        self.vae_images: list[Tensor] = []
        self.vae_shapes: list[tuple[int, int]] = []
        self.lat_pos: list[Tensor] = []
        self.vae_idx: list[int] = []
        self.vae_frames: list[int] = []
        self.logits: list[float] = []
        self.mse_idx: list[int] = []
        self.ce_idx: list[int] = []
        self.labels: list[int] = []
        self.ce_w: list[float] = []
        self.curr = 0

    def add_text_tokens(self, ids: list[int], rope: int) -> None:
        n = len(ids)
        self.text_ids += ids
        self.text_idx += range(self.curr, self.curr + n)
        self.pos += range(rope, rope + n)


def _check_image(img: Tensor, stride: int, what: str, source: str) -> tuple[int, int]:
    h, w = img.shape[1:]
    if h % stride or w % stride:
        raise ValueError(f"{source}: {what} of size {h}x{w} is not a multiple of {stride}; resize it with "
                         "loom.data.transforms.ImageTransform first")
    return h // stride, w // stride


def _dropped(rng: random.Random, whole: str | None, kind: str, prob: float) -> bool:
    """Per-item decision for an eligible item of `kind`; the per-item draw is consumed even when the sample's
    whole-condition mode decides (a fixed draw count keeps scripted draws aligned, `loom.data.loader`)."""
    hit = prob > 0 and rng.random() < prob
    return whole == kind if whole is not None else hit


def pack_sequences(plans: list[SequencePlan], tokens: SpecialTokens, geometry: PackGeometry,
                   dropout: CondDropout | None = None, rng: random.Random | None = None,
                   timestep_generator: torch.Generator | None = None) -> PackedBatch:
    """Pack several samples into one batch. Randomness (CFG dropout, timestep logits) comes only from `rng` and
    `timestep_generator`; items may carry explicit `timestep_logit`s for exact reproducibility. Draw order per
    sample: the whole-condition draw (if `dropout.whole`), then one draw per eligible item with a per-item
    probability > 0 — drawn even when the whole-condition draw already decided, so the count never varies."""
    dropout = dropout or CondDropout()
    rng = rng or random.Random(0)
    b = _Builder()
    sample_lens, sources = [], []
    for plan in plans:
        start, rope = b.curr, 0
        whole = dropout.whole_mode(rng.random()) if dropout.whole else None
        for item in plan.items:
            if item.type == "text":
                if item.enable_cfg and _dropped(rng, whole, "text", dropout.text):
                    continue  # dropped text leaves no rope gap
                ids = [tokens.bos, *item.text_ids, tokens.eos]
                b.add_text_tokens(ids, rope)
                if item.loss:
                    b.ce_idx += range(b.curr, b.curr + len(ids) - 1)
                    b.labels += ids[1:]
                    b.ce_w += [1.0 / math.sqrt(len(ids) - 1)] * (len(ids) - 1)
                if item.special_token_label is not None:
                    b.ce_idx.append(b.curr + len(ids) - 1)
                    b.labels.append(item.special_token_label)
                    b.ce_w.append(1.0)
                b.split_lens.append(len(ids))
                b.modes.append("causal")
                b.curr += len(ids)
                rope += len(ids)
                continue

            prob = dropout.vit if item.type == "vit_image" else dropout.vae
            if item.enable_cfg and _dropped(rng, whole, "image", prob):
                rope += 1  # dropped images still advance rope (bagel-spec §4.2)
                continue
            if item.type == "vit_image":
                gh, gw = _check_image(item.image, geometry.vit_patch, "ViT image", plan.source)
                n = gh * gw
                b.vit_tokens.append(patchify_image(item.image, geometry.vit_patch))
                b.vit_lens.append(n)
                b.vit_pos.append(grid_position_ids(gh, gw, geometry.vit_grid))
                b.vit_idx += range(b.curr + 1, b.curr + 1 + n)
                b.vit_frames += [item.frame] * n
                mode = "full"
            else:
                gh, gw = _check_image(item.image, geometry.latent_stride, "VAE image", plan.source)
                n = gh * gw
                b.vae_images.append(item.image)
                b.vae_shapes.append((gh, gw))
                b.lat_pos.append(grid_position_ids(gh, gw, geometry.latent_grid))
                b.vae_idx += range(b.curr + 1, b.curr + 1 + n)
                b.vae_frames += [item.frame] * n
                if item.loss:
                    logit = item.timestep_logit
                    if logit is None:
                        logit = float(torch.randn(1, generator=timestep_generator))
                    b.logits += [logit] * n
                    b.mse_idx += range(b.curr + 1, b.curr + 1 + n)
                    mode = "noise"
                else:
                    b.logits += [-math.inf] * n
                    mode = "full"
            # markers are text tokens (understanding expert); the whole block shares one rope id
            b.text_ids += [tokens.start_of_image, tokens.end_of_image]
            b.text_idx += [b.curr, b.curr + n + 1]
            b.pos += [rope] * (n + 2)
            b.split_lens.append(n + 2)
            b.modes.append(mode)
            b.curr += n + 2
            if not (item.type == "vae_image" and item.loss):
                rope += 1  # a noisy target does not advance rope; its clean copy reuses the id
        if b.curr == start:
            raise ValueError(f"{plan.source or 'sample'}: empty after packing (every item dropped?)")
        sample_lens.append(b.curr - start)
        sources.append(plan.source)

    def lt(x: list, dtype=torch.long) -> Tensor:
        return torch.tensor(x, dtype=dtype)

    order = torch.argsort(lt(b.text_idx))  # markers were appended out of position order
    vit_dim = 3 * geometry.vit_patch**2
    return PackedBatch(
        sequence_length=b.curr,
        sample_lens=sample_lens,
        split_lens=b.split_lens,
        attn_modes=b.modes,
        packed_position_ids=lt(b.pos),
        packed_text_ids=lt(b.text_ids)[order],
        packed_text_indexes=lt(b.text_idx)[order],
        packed_vit_tokens=torch.cat(b.vit_tokens) if b.vit_tokens else torch.zeros(0, vit_dim),
        vit_token_seqlens=lt(b.vit_lens),
        packed_vit_position_ids=torch.cat(b.vit_pos) if b.vit_pos else lt([]),
        packed_vit_token_indexes=lt(b.vit_idx),
        packed_vit_frame_ids=lt(b.vit_frames),
        vae_images=b.vae_images,
        vae_latent_shapes=b.vae_shapes,
        packed_latent_position_ids=torch.cat(b.lat_pos) if b.lat_pos else lt([]),
        packed_vae_token_indexes=lt(b.vae_idx),
        packed_vae_frame_ids=lt(b.vae_frames),
        packed_timestep_logits=lt(b.logits, torch.float32),
        mse_loss_indexes=lt(b.mse_idx),
        ce_loss_indexes=lt(b.ce_idx),
        packed_label_ids=lt(b.labels),
        ce_loss_weights=lt(b.ce_w, torch.float32),
        sample_sources=sources,
    )
