"""The one contract between data and model: a semantic *sequence plan* and the *packed batch* built from it.

A sample is a `SequencePlan`: an ordered list of `PlanItem`s (text / vit_image / vae_image), each with its
loss and CFG-dropout flags, exactly the item kinds of BAGEL's `sequence_plan` (bagel-spec §3.1). `loom.data.packing`
turns a list of plans into one `PackedBatch`, which carries every tensor `Loom.forward` needs.

Shape letters: L packed length, N_text text/marker tokens, N_vit ViT patch tokens, N_vae latent tokens,
N_ce CE positions, N_mse MSE positions, P = 3·patch² ViT patch vector width, Dl = C·p² latent token width.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import torch
from torch import Tensor

ItemType = Literal["text", "vit_image", "vae_image"]
AttnMode = Literal["causal", "full", "noise"]


@dataclass
class PlanItem:
    """One item of a sequence plan.

    text: `text_ids` (no markers; the packer adds `<|im_start|>`/`<|im_end|>`); `loss` → CE on the ids and the
    closing `<|im_end|>`. vit_image / vae_image: `image` is a normalised [3, H, W] tensor in [-1, 1], already
    resized to the stride of its branch (14 for ViT, 16 for VAE). A vae_image with `loss` is a noisy target
    (MSE, attention mode `noise`). `frame` is Loom's temporal index (Eq. 3): 0 = no temporal embedding,
    1..N_max = tutorial frame t, -k = reference image k (never confused with timeline frames).
    """

    type: ItemType
    text_ids: list[int] | None = None
    image: Tensor | None = None
    loss: bool = False
    enable_cfg: bool = False
    frame: int = 0
    special_token_label: int | None = None  # extra CE at the closing marker (BAGEL's special_token_loss)
    timestep_logit: float | None = None  # explicit logit-normal draw for a noisy target (reproducibility)
    name: str = ""  # free-form label for diagnostics and token diagrams

    def __post_init__(self) -> None:
        if self.type == "text":
            if self.text_ids is None:
                raise ValueError(f"text item {self.name!r} has no text_ids")
        elif self.type in ("vit_image", "vae_image"):
            if self.image is None or self.image.dim() != 3 or self.image.shape[0] != 3:
                raise ValueError(f"{self.type} item {self.name!r} needs a [3, H, W] image tensor")
            if self.loss and self.type == "vit_image":
                raise ValueError("a vit_image cannot carry a loss (only vae_image targets have MSE)")
        else:
            raise ValueError(f"unknown plan item type {self.type!r} (text / vit_image / vae_image)")


@dataclass
class SequencePlan:
    """One training sample (or one inference context): items in sequence order."""

    items: list[PlanItem]
    source: str = ""  # where the sample came from (manifest path:row), named in every error


@dataclass
class PackedBatch:
    """Every tensor the training forward needs for one pack of samples (bagel-spec §3.3, plus Loom fields).

    Masks are not materialised here: `split_lens` / `attn_modes` / `sample_lens` describe them and
    `loom.model.attention` builds the dense, flex or varlen form the backend wants.
    """

    sequence_length: int
    sample_lens: list[int]  # tokens per sample; samples never attend to each other
    split_lens: list[int]  # one entry per attention split, all samples concatenated
    attn_modes: list[str]  # causal / full / noise, parallel to split_lens
    packed_position_ids: Tensor  # [L] int64 RoPE ids (text consecutive, one id per image block)
    packed_text_ids: Tensor  # [N_text] int64 ids of text and marker tokens
    packed_text_indexes: Tensor  # [N_text] int64 positions in the pack
    packed_vit_tokens: Tensor  # [N_vit, P] float flattened normalised patches (py, px, rgb)
    vit_token_seqlens: Tensor  # [n_vit_images] int64
    packed_vit_position_ids: Tensor  # [N_vit] int64 r·G_vit + c
    packed_vit_token_indexes: Tensor  # [N_vit] int64
    packed_vit_frame_ids: Tensor  # [N_vit] int64 temporal index (0 = none)
    vae_images: list[Tensor]  # one normalised [3, H, W] per VAE image, pack order
    vae_latent_shapes: list[tuple[int, int]]  # (h, w) latent-token grid per VAE image
    packed_latent_position_ids: Tensor  # [N_vae] int64 r·G_lat + c
    packed_vae_token_indexes: Tensor  # [N_vae] int64
    packed_vae_frame_ids: Tensor  # [N_vae] int64 temporal index (0 = none)
    packed_timestep_logits: Tensor  # [N_vae] float; -inf for clean images (t = 0)
    mse_loss_indexes: Tensor  # [N_mse] int64 pack positions of noisy-target tokens
    ce_loss_indexes: Tensor  # [N_ce] int64 positions whose logits are scored
    packed_label_ids: Tensor  # [N_ce] int64 next-token labels
    ce_loss_weights: Tensor  # [N_ce] float 1/sqrt(len) per text item (BAGEL "square"), 1 for special labels
    packed_noise: Tensor | None = None  # [N_vae, Dl] explicit flow noise (None: drawn by the train step)
    sample_sources: list[str] = field(default_factory=list)

    @property
    def packed_und_token_indexes(self) -> Tensor:
        """Positions routed to the understanding expert: text, markers and ViT tokens (bagel-spec §2.2)."""
        return torch.cat([self.packed_text_indexes, self.packed_vit_token_indexes]).sort().values

    @property
    def packed_gen_token_indexes(self) -> Tensor:
        return self.packed_vae_token_indexes

    @property
    def num_vae_tokens(self) -> int:
        return int(self.packed_vae_token_indexes.numel())

    def to(self, device: torch.device | str) -> PackedBatch:
        """Move every tensor (and the VAE images) to `device`; lists of ints stay on the host."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.to(device)
            elif f.name == "vae_images":
                v = [x.to(device) for x in v]
            out[f.name] = v
        return PackedBatch(**out)
