"""`Loom`: the BAGEL MoT model plus Loom's temporal embedding, with ONE training forward over a `PackedBatch`.

Top-level module names equal the release's state-dict prefixes (`language_model`, `vit_model`, `connector`,
`vit_pos_embed`, `time_embedder`, `vae2llm`, `llm2vae`, `latent_pos_embed`); Loom adds `temporal_embed.weight`.
The VAE is not part of the module (frozen, outside FSDP, like BAGEL). KV-cached generation lives in
`loom.infer`, which reuses the `embed_*` methods and `language_model` directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.types import PackedBatch
from .attention import spec_from_splits
from .configs import LoomConfig
from .flow import noisy_latents, timesteps_from_logits, velocity_target
from .layers import ConnectorMLP, PositionEmbedding, TimestepEmbedder
from .llm import LanguageModel
from .mot import DecoderLayer, Routing
from .vit import SiglipEncoderLayer, SiglipVisionModel

TEMPORAL_KEY = "temporal_embed.weight"


@dataclass
class LoomOutput:
    ce: Tensor  # [N_ce] per-token cross-entropy (unreduced; the trainer normalises globally)
    mse: Tensor  # [N_mse] per-token MSE, mean over the Dl channels
    logits: Tensor | None = None  # [N_ce, V]
    v_pred: Tensor | None = None  # [N_mse, Dl]
    v_target: Tensor | None = None  # [N_mse, Dl]
    # 0-valued scalar tied to the trainable root parameters this pack did not use (`Loom._unused`); the trainer
    # adds it to the loss so they receive an exact-zero gradient instead of none
    unused: Tensor | float = 0.0


class TemporalEmbedding(nn.Module):
    """Loom Eq. 3: a learnable vector e_t added to every visual token of frame t before attention.

    Rows: 0 = unused, 1..max_frames = timeline frames, max_frames + k = reference k (frame id −k), so references
    never share a slot with a timeline frame. Zero-initialised: a fresh Loom computes exactly what BAGEL computes.
    """

    def __init__(self, max_frames: int, max_references: int, dim: int) -> None:
        super().__init__()
        self.max_frames, self.max_references = max_frames, max_references
        self.weight = nn.Parameter(torch.zeros(1 + max_frames + max_references, dim))

    def rows(self, frame_ids: Tensor) -> Tensor:
        if bool((frame_ids > self.max_frames).any()) or bool((frame_ids < -self.max_references).any()):
            raise ValueError(
                f"frame id out of range [-{self.max_references}, {self.max_frames}]: "
                f"min {int(frame_ids.min())}, max {int(frame_ids.max())}; raise model.max_frames / max_references"
            )
        return torch.where(frame_ids < 0, self.max_frames - frame_ids, frame_ids)

    def forward(self, frame_ids: Tensor) -> Tensor:
        """frame_ids [N] → [N, D]; frame id 0 gives an exact zero (row 0 is masked out, never trained).
        `F.embedding`, not `weight[rows]`: the backward of advanced indexing accumulates repeated rows with
        parallel atomic adds on CPU (thread-count dependent bits); embedding's backward sums each row in order."""
        emb = F.embedding(self.rows(frame_ids), self.weight)
        return emb * (frame_ids != 0).unsqueeze(-1).to(emb.dtype)


class Loom(nn.Module):
    # FSDP / activation-checkpointing wrap units, applied from loom.train.parallel (house rule 2)
    fsdp_blocks = (DecoderLayer, SiglipEncoderLayer)

    def __init__(self, cfg: LoomConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.llm.hidden_size
        self.language_model = LanguageModel(cfg.llm)
        if cfg.visual_und:
            self.vit_model = SiglipVisionModel(cfg.vit)
            self.connector = ConnectorMLP(cfg.vit.hidden_size, d)
            self.vit_pos_embed = PositionEmbedding(cfg.vit_max_num_patch_per_side, d)
        if cfg.visual_gen:
            self.time_embedder = TimestepEmbedder(d)
            self.vae2llm = nn.Linear(cfg.latent_token_dim, d)
            self.llm2vae = nn.Linear(d, cfg.latent_token_dim)
            self.latent_pos_embed = PositionEmbedding(cfg.max_latent_size, d)
        if cfg.temporal_embedding:
            self.temporal_embed = TemporalEmbedding(cfg.max_frames, cfg.max_references, d)
        self.attn_backend = "sdpa"

    # ---- token embeddings (shared with the inference engine) ----------------------------------------------
    def _temporal(self, frame_ids: Tensor | None) -> Tensor | float:
        if frame_ids is None or not self.config.temporal_embedding or not bool((frame_ids != 0).any()):
            return 0.0
        return self.temporal_embed(frame_ids)

    def embed_text(self, ids: Tensor) -> Tensor:
        return self.language_model.model.embed_tokens(ids)

    def embed_vit(self, patches: Tensor, position_ids: Tensor, seqlens: Tensor,
                  frame_ids: Tensor | None = None, backend: str | None = None) -> Tensor:
        """[N, 3p²] patches → [N, D] = connector(SigLIP(patches)) + vit_pos_embed[pos] (+ e_t)."""
        feats = self.vit_model(patches, position_ids, seqlens, backend or self.attn_backend)
        return self.connector(feats) + self.vit_pos_embed(position_ids) + self._temporal(frame_ids)

    def embed_latents(self, x_t: Tensor, t: Tensor, position_ids: Tensor, frame_ids: Tensor | None = None) -> Tensor:
        """[N, Dl] latent tokens at flow time t [N] → vae2llm(x_t) + time_embedder(t) + latent_pos_embed (+ e_t).
        Clean images (t = 0) still receive time_embedder(0), as in BAGEL."""
        w = self.vae2llm.weight
        return self.vae2llm(x_t.to(w.dtype)) + self.time_embedder(t) + self.latent_pos_embed(position_ids) \
            + self._temporal(frame_ids)

    # ---- training forward ----------------------------------------------------------------------------------
    def forward(self, batch: PackedBatch, x0: Tensor | None = None, return_logits: bool = False,
                timestep_shift: float = 1.0) -> LoomOutput:
        """One packed training forward (bagel-spec §2.1).

        x0: [N_vae, Dl] clean latent tokens of every VAE image in pack order (see `vae.encode_to_tokens`).
        The flow noise comes from `batch.packed_noise` ([N_vae, Dl]; rows of clean images are ignored).
        """
        emb_tok = self.embed_text(batch.packed_text_ids)
        dtype = emb_tok.dtype
        x = emb_tok.new_zeros((batch.sequence_length, emb_tok.shape[-1]))
        x[batch.packed_text_indexes] = emb_tok
        if batch.packed_vit_token_indexes.numel():
            x[batch.packed_vit_token_indexes] = self.embed_vit(
                batch.packed_vit_tokens, batch.packed_vit_position_ids, batch.vit_token_seqlens,
                batch.packed_vit_frame_ids).to(dtype)
        target = None
        if batch.num_vae_tokens:
            if x0 is None:
                raise ValueError("batch has VAE tokens but no clean latents x0 were given")
            t = timesteps_from_logits(batch.packed_timestep_logits, timestep_shift).to(x0.device)
            is_target = torch.isfinite(batch.packed_timestep_logits)
            x_t = x0
            if bool(is_target.any()):
                if batch.packed_noise is None:
                    raise ValueError("batch has noisy targets but packed_noise is None (draw it in the train step)")
                x_t = torch.where(is_target[:, None], noisy_latents(x0, batch.packed_noise, t), x0)
                target = velocity_target(x0, batch.packed_noise)[is_target]
            x[batch.packed_vae_token_indexes] = self.embed_latents(
                x_t, t, batch.packed_latent_position_ids, batch.packed_vae_frame_ids).to(dtype)

        gen_mask = torch.zeros(batch.sequence_length, dtype=torch.bool, device=x.device)
        gen_mask[batch.packed_vae_token_indexes] = True
        spec = spec_from_splits(batch.sample_lens, batch.split_lens, batch.attn_modes, x.device)
        freeze_und = self.language_model.freeze_und
        if freeze_und:  # understanding inputs are constants too (bagel-spec §2.4)
            x = torch.where(gen_mask[:, None], x, x.detach())
        # with grad: both experts run in every layer, on zero rows if the pack has no token for one (see _unused)
        route = Routing.from_gen_mask(gen_mask, freeze_und, all_experts=torch.is_grad_enabled())
        h, _ = self.language_model(x, batch.packed_position_ids, route, spec, self.attn_backend, return_kv=False)

        logits = self.language_model.lm_head(h[batch.ce_loss_indexes])
        ce = F.cross_entropy(logits.float(), batch.packed_label_ids, reduction="none")
        if target is not None:
            v_pred = self.llm2vae(h[batch.mse_loss_indexes])
            mse = (v_pred.float() - target.float()).pow(2).mean(-1)
        else:
            v_pred, mse = None, h.new_zeros(0)
        unused = self._unused(batch, h, target is not None) if torch.is_grad_enabled() else 0.0
        return LoomOutput(ce=ce, mse=mse, logits=logits if return_logits else None, v_pred=v_pred, v_target=target,
                          unused=unused)

    def _unused(self, batch: PackedBatch, h: Tensor, has_target: bool) -> Tensor:
        """0 · (one element of each trainable parameter of the modules this pack does not use, and of h).

        Under FSDP2 a wrap unit reduce-scatters the gradients of the parameters that received one, so every rank
        must agree on that set; with one task per rank it does not (t2i has no CE tokens, understanding no
        latents, BAGEL's families no temporal slot). Tying the unused root modules to the loss with an exact 0
        gives each of them a zero gradient on every rank — what FSDP1's flat parameters (BAGEL) always had. The
        decoder layers run both experts for the same reason (`Routing.all_experts`); the ViT layers are kept in
        step by the loader's one-patch ViT pseudo-sample (`pack_plans(ensure_vit=True)`). The final hidden state
        `h` is tied too: a pack without loss tokens of the kinds the step has (a loss-free filler pack, a
        t2i pack in a step without CE) would otherwise leave every wrap unit out of this rank's backward, and
        FSDP2 ranks would issue their per-unit collectives in different orders (a hang)."""
        cfg = self.config
        mods: list[nn.Module] = []
        if batch.ce_loss_indexes.numel() == 0:
            mods.append(self.language_model.lm_head)
        if cfg.visual_und and batch.packed_vit_token_indexes.numel() == 0:
            mods += [self.vit_model, self.connector]
        if cfg.visual_gen and not batch.num_vae_tokens:
            mods += [self.time_embedder, self.vae2llm]
        if cfg.visual_gen and not has_target:
            mods.append(self.llm2vae)
        if cfg.temporal_embedding:
            ids = [t for t in (batch.packed_vit_frame_ids, batch.packed_vae_frame_ids) if t is not None]
            if not any(bool((t != 0).any()) for t in ids):
                mods.append(self.temporal_embed)
        inner = {id(p) for m in self.modules() if isinstance(m, self.fsdp_blocks) for p in m.parameters()}
        params = [p for m in mods for p in m.parameters() if p.requires_grad and id(p) not in inner]
        firsts = [p.reshape(-1)[0].float() for p in params] + [h.reshape(-1)[0].float()]
        return torch.stack(firsts).sum() * 0.0

    @torch.no_grad()
    def reset_fixed_tables(self) -> None:
        """Recompute the frozen sin-cos tables (after meta-device materialisation)."""
        for m in (getattr(self, "vit_pos_embed", None), getattr(self, "latent_pos_embed", None)):
            if m is not None:
                m.reset_table()
