"""The inference engine: KV-cached contexts, text decoding and the flow sampler with batched CFG.

Separate from the model (house rule 6): it calls `Loom.embed_*` and `Loom.language_model` with packed, varlen
query blocks over one or several cached contexts. Every CFG branch of a denoising step runs in ONE forward
(`Engine.forward_blocks` with several contexts), where BAGEL runs up to three sequential passes.

Each block attends to its context's K/V where they are stored (`loom.infer.cache`): a context at a page tip is
read in place, any other is gathered once — once per image for the denoising loop, whose steps then copy only
the query's new K/V. Text decoding moves its context to a page with room first, then appends in place.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from ..data.tokenizer import SpecialTokens, encode
from ..data.transforms import ImageTransform, grid_position_ids, patchify_image, pil_to_tensor
from ..model.attention import CachedBlocks, LayerKV
from ..model.flow import euler_step, inference_timesteps
from ..model.loom import Loom
from ..model.mot import Routing
from ..model.vae import decoded_to_uint8, patchify_latent, unpatchify_latent
from .cache import BlockKV, Buffers, Context, attention_buffers
from .entity_cfg import EntityGuidance, attention_to_mask, entity_attention_map, guided_velocity
from .sampling import cfg_active, combine_cfg, sample_token


@dataclass
class Block:
    """New tokens for one context: embeddings [n, D], RoPE ids [n], expert routing [n] (True = generation)."""

    emb: Tensor
    position_ids: Tensor
    gen_mask: Tensor
    causal: bool
    rope_advance: int
    what: str


@dataclass
class ImageSamplerConfig:
    num_timesteps: int = 50
    timestep_shift: float = 3.0
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 1.5
    cfg_interval: tuple[float, float] = (0.4, 1.0)
    cfg_renorm_type: str = "global"
    cfg_renorm_min: float = 0.0
    bagel_compat: bool = False  # True: skip image CFG when the text scale is ≤ 1, as BAGEL does


class Engine:
    def __init__(self, model: Loom, vae, tokenizer, vae_transform: ImageTransform | None = None,
                 vit_transform: ImageTransform | None = None) -> None:
        self.model, self.vae, self.tok = model.eval(), vae, tokenizer
        self.cfg = model.config
        self.tokens = SpecialTokens.from_tokenizer(tokenizer)
        # BAGEL inference defaults (bagel-spec §5.1)
        self.vae_transform = vae_transform or ImageTransform(1024, 512, 16)
        self.vit_transform = vit_transform or ImageTransform(980, 224, 14)
        self.num_forwards = 0  # LLM passes, for benchmarks (one per denoising step with CFG on)
        self.kv_bytes_gathered = 0  # cached K/V copied into attention workspaces (contexts spread over pages)

    @property
    def device(self) -> torch.device:
        return self.model.language_model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.language_model.lm_head.weight.dtype

    def _long(self, x) -> Tensor:
        return torch.as_tensor(x, dtype=torch.long, device=self.device)

    # ---- blocks (embeddings without autograd: inference never backpropagates) ---------------------------------
    @torch.no_grad()
    def text_block(self, ctx: Context, ids: list[int], wrap: bool = True) -> Block:
        ids = [self.tokens.bos, *ids, self.tokens.eos] if wrap else list(ids)
        t = self._long(ids)
        return Block(self.model.embed_text(t), torch.arange(ctx.rope, ctx.rope + len(ids), device=self.device),
                     torch.zeros(len(ids), dtype=torch.bool, device=self.device), True, len(ids), "text")

    def _wrap_image(self, ctx: Context, inner: Tensor, gen: bool, what: str, rope_advance: int = 1) -> Block:
        markers = self.model.embed_text(self._long([self.tokens.start_of_image, self.tokens.end_of_image]))
        emb = torch.cat([markers[:1], inner.to(markers.dtype), markers[1:]])
        n = emb.shape[0]
        gen_mask = torch.zeros(n, dtype=torch.bool, device=self.device)
        if gen:
            gen_mask[1:-1] = True
        return Block(emb, torch.full((n,), ctx.rope, device=self.device), gen_mask, False, rope_advance, what)

    @torch.no_grad()
    def vit_block(self, ctx: Context, image: Tensor, frame: int = 0) -> Block:
        p = self.cfg.vit.patch_size
        gh, gw = image.shape[1] // p, image.shape[2] // p
        patches = patchify_image(image, p).to(self.device)
        pos = grid_position_ids(gh, gw, self.cfg.vit_max_num_patch_per_side).to(self.device)
        frames = torch.full((gh * gw,), frame, dtype=torch.long, device=self.device)
        emb = self.model.embed_vit(patches, pos, self._long([gh * gw]), frames)
        return self._wrap_image(ctx, emb, gen=False, what=f"vit{'' if not frame else f'@{frame}'}")

    @torch.no_grad()
    def latent_block(self, ctx: Context, x: Tensor, t: float, h: int, w: int, frame: int = 0,
                     rope_advance: int = 1, what: str = "vae") -> Block:
        pos = grid_position_ids(h, w, self.cfg.max_latent_size).to(self.device)
        tt = torch.full((h * w,), float(t), device=self.device)
        frames = torch.full((h * w,), frame, dtype=torch.long, device=self.device)
        emb = self.model.embed_latents(x.to(self.device), tt, pos, frames)
        return self._wrap_image(ctx, emb, gen=True, what=what, rope_advance=rope_advance)

    # ---- the one packed forward over several contexts --------------------------------------------------------
    def attention_buffers(self, contexts: list[Context], sizes: list[int]) -> list[Buffers | None]:
        """What each block attends (`cache.attention_buffers`), made once per distinct stored range: the same
        context twice (or two contexts ending at the same page tip) share one buffer."""
        made: dict[tuple, Buffers | None] = {}
        out = []
        for ctx, n in zip(contexts, sizes):
            tip = ctx.tip_room() >= n
            key = (tip, n if not tip else 0, *((id(s.page), s.start, s.end) for s in ctx.segments))
            if key not in made:
                made[key] = attention_buffers(ctx, n)
                self.kv_bytes_gathered += made[key].copied if made[key] is not None else 0
            out.append(made[key])
        return out

    @torch.no_grad()
    def forward_blocks(self, contexts: list[Context], blocks: list[Block],
                       buffers: list[Buffers | None] | None = None) -> tuple[Tensor, list[BlockKV]]:
        """Run block b on top of context b for every b in ONE varlen pass. Returns the final hidden states of all
        new tokens [Σn, D] (block order) and, per block, its per-layer new (k, v) for `Context.append`.
        `buffers`: what each block attends, prepared by `attention_buffers` (reused over denoising steps)."""
        sizes = [blk.emb.shape[0] for blk in blocks]
        if buffers is None:
            buffers = self.attention_buffers(contexts, sizes)
        num_layers = self.cfg.llm.num_hidden_layers
        kv = None
        if any(b is not None for b in buffers):
            kv = [LayerKV([b.keys[i] if b else None for b in buffers], [b.values[i] if b else None for b in buffers])
                  for i in range(num_layers)]
        writes = {}
        for b in buffers:  # a new write into a page's scratch rows invalidates earlier, unclaimed ones
            if b is not None and b.slot is not None and id(b) not in writes:
                b.slot[0].writes += 1
                writes[id(b)] = b.slot[0].writes
        layout = CachedBlocks(sizes, [c.kv_len for c in contexts], [blk.causal for blk in blocks])
        x = torch.cat([blk.emb for blk in blocks])
        pos = torch.cat([blk.position_ids for blk in blocks])
        route = Routing.from_gen_mask(torch.cat([blk.gen_mask for blk in blocks]))
        h, new = self.model.language_model(x, pos, route, None, self.model.attn_backend, kv, layout)
        self.num_forwards += 1
        last = {id(b): i for i, b in enumerate(buffers) if b is not None}
        per_block = []
        for i, b in enumerate(buffers):
            slot = None
            if b is not None and b.slot is not None and last[id(b)] == i:  # its new rows sit in the page scratch
                slot = (b.slot[0], b.slot[1], writes[id(b)])
            per_block.append(BlockKV([layer[i] for layer in new], slot))
        return h, per_block

    def attention_modules(self) -> list:
        return [layer.self_attn for layer in self.model.language_model.model.layers]

    @contextmanager
    def capture_attention(self, layers: tuple[int, ...] | None, q_rows, k_rows):
        """Switch on `Attention.capture` in `layers` (None = all) for the forwards inside the block; yields
        {layer: dict}, each holding "q" [n, H, d] (post-RoPE queries `q_rows` of the packed query) and "k"
        [m, Hkv, d] (merged keys `k_rows`) after a forward. Capture is always switched off again."""
        mods = self.attention_modules()
        idx = range(len(mods)) if layers is None else layers
        caps = {i: {"q_rows": q_rows, "k_rows": k_rows} for i in idx}
        try:
            for i, c in caps.items():
                mods[i].capture = c
            yield caps
        finally:
            for i in caps:
                mods[i].capture = None

    def entity_map(self, caps: dict, positions: list[int]) -> Tensor:
        """Mean over captured layers of `entity_attention_map` (heads and entity tokens averaged) → [n]."""
        maps = [entity_attention_map(c["q"].transpose(0, 1), c["k"].transpose(0, 1), positions)
                for c in caps.values()]
        return torch.stack(maps).mean(0)

    def extend(self, ctx: Context, block: Block) -> Context:
        _, kv = self.forward_blocks([ctx], [block])
        return ctx.append(kv[0], block.rope_advance, block.what)

    # ---- context building -----------------------------------------------------------------------------------
    def add_text(self, ctx: Context, text: str | list[int]) -> Context:
        ids = encode(self.tok, text) if isinstance(text, str) else list(text)
        return self.extend(ctx, self.text_block(ctx, ids))

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """The VAE resize rule applied to an input image (the generated output keeps this size)."""
        return self.vae_transform.resize(image)

    @torch.no_grad()
    def encode_image(self, image: Tensor) -> tuple[Tensor, int, int]:
        """[3, H, W] → clean latent tokens [h·w, Dl] (posterior mean) and the token grid."""
        p = self.cfg.latent_patch_size
        lat = self.vae.encode(image[None].to(self.device, torch.float32))[0]
        h, w = lat.shape[1] // p, lat.shape[2] // p
        return patchify_latent(lat, p), h, w

    def add_image(self, ctx: Context, image: Image.Image, vae: bool = True, vit: bool = True, frame: int = 0,
                  resized: bool = False) -> Context:
        """Prefill an image block: VAE first (generation expert, t = 0), then ViT (bagel-spec §7.1)."""
        img = image if resized else self.prepare_image(image)
        if vae:
            tokens, h, w = self.encode_image(pil_to_tensor(img))
            ctx = self.extend(ctx, self.latent_block(ctx, tokens, 0.0, h, w, frame))
        if vit:
            ctx = self.extend(ctx, self.vit_block(ctx, self.vit_transform(img), frame))
        return ctx

    def add_latents(self, ctx: Context, tokens: Tensor, h: int, w: int, frame: int = 0) -> Context:
        """Feed a generated frame back clean (t = 0) without a pixel round trip."""
        return self.extend(ctx, self.latent_block(ctx, tokens, 0.0, h, w, frame))

    # ---- text generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_text(self, ctx: Context, max_length: int = 512, temperature: float = 0.0, top_p: float = 1.0,
                      stop_at_eos: bool = True, generator: torch.Generator | None = None, streamer=None
                      ) -> tuple[list[int], Tensor, Context]:
        """Decode starting from `<|im_start|>`. Returns (fed ids incl. the start token, per-step logits
        [n, V], the context with every fed token cached). The start token counts towards `max_length`.
        `streamer` (transformers `BaseStreamer`: put / end) receives each token after the start token as it is fed."""
        ids, logits_all, tok = [], [], self.tokens.bos
        for step in range(max_length):
            if ctx.segments and ctx.tip_room() < 1:  # one copy at most; every token is then appended in place
                ctx = ctx.with_room(max_length - step)
            blk = self.text_block(ctx, [tok], wrap=False)
            h, kv = self.forward_blocks([ctx], [blk])
            ctx = ctx.append(kv[0], 1, "gen")
            logits = self.model.language_model.lm_head(h[-1:])[0].float()
            ids.append(tok)
            if streamer is not None and len(ids) > 1:
                streamer.put(torch.tensor([tok]))
            logits_all.append(logits)
            tok = sample_token(logits, temperature, top_p, generator)
            if stop_at_eos and tok == self.tokens.eos:
                break
        if streamer is not None:
            streamer.end()
        return ids, torch.stack(logits_all), ctx

    def decode_text(self, ids: list[int]) -> str:
        """Drop the start token and anything from `<|im_end|>` on."""
        body = ids[1:] if ids and ids[0] == self.tokens.bos else ids
        if self.tokens.eos in body:
            body = body[: body.index(self.tokens.eos)]
        return self.tok.decode(body, skip_special_tokens=False)

    # ---- image generation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_image(self, cond: Context, text_uncond: Context | None, img_uncond: Context | None, h: int,
                       w: int, sampler: ImageSamplerConfig, noise: Tensor | None = None, frame: int = 0,
                       generator: torch.Generator | None = None, trace: dict | None = None,
                       velocity_hook=None, callback=None, entity: EntityGuidance | None = None) -> Tensor:
        """Shifted Euler flow sampling of an h×w-token image; the query is never written to any cache.

        Active CFG branches of a step run as one batched forward. Returns the final latent tokens [h·w, Dl].
        `trace` (optional dict) receives per-step velocities for parity checks; `callback(step, num_steps)` is
        called after every Euler step (progress bars). `entity`: localised entity CFG (Loom appendix A.1) with a
        given mask or one derived from the conditional branch's attention to the entity tokens, captured
        inside the same forward (still one LLM pass per step); `velocity_hook`, when given, overrides it."""
        dl = self.cfg.latent_token_dim
        x = noise.clone().float() if noise is not None else torch.randn(h * w, dl, generator=generator)
        ts = inference_timesteps(sampler.num_timesteps, sampler.timestep_shift)
        mask = None
        if entity is not None:
            entity.attention, entity.used_mask = None, None
            if entity.mask is not None:
                mask = entity.mask.reshape(-1).to(self.device)
                if mask.numel() != h * w:
                    raise ValueError(f"entity mask has {mask.numel()} tokens, the image has {h}x{w}")
                entity.used_mask = mask
            elif entity.context_len not in (None, cond.kv_len):
                raise ValueError(f"entity positions were computed for {entity.context_len} context tokens, the "
                                 f"conditional context has {cond.kv_len}")
            elif max(entity.positions) >= cond.kv_len or min(entity.positions) < 0:
                raise ValueError(f"entity positions {entity.positions} outside the {cond.kv_len}-token context")
        attn_sum, n_caps = None, 0
        n = h * w + 2
        branches = [c for c in (cond, text_uncond, img_uncond) if c is not None]
        # what each branch attends, made once for all steps: a step then copies only its query's new K/V
        prepared = dict(zip(map(id, branches), self.attention_buffers(branches, [n] * len(branches))))
        for i in range(sampler.num_timesteps - 1):
            t = float(ts[i])
            active = cfg_active(t, sampler.cfg_interval)
            s_t = sampler.cfg_text_scale if active else 1.0
            s_i = sampler.cfg_img_scale if active else 1.0
            use_t = s_t > 1.0 and text_uncond is not None
            use_i = s_i > 1.0 and img_uncond is not None and (use_t or not sampler.bagel_compat)
            ctxs = [cond] + ([text_uncond] if use_t else []) + ([img_uncond] if use_i else [])
            blocks = [self.latent_block(c, x, t, h, w, frame, 0, "query") for c in ctxs]
            capture = entity is not None and entity.mask is None and i <= entity.step
            # cond's block comes first: its latent queries are rows 1..h·w, its keys the first kv_len + n
            cap = (self.capture_attention(entity.layers, slice(1, n - 1), slice(0, cond.kv_len + n))
                   if capture else nullcontext())
            with cap as caps:
                hid, _ = self.forward_blocks(ctxs, blocks, [prepared[id(c)] for c in ctxs])
            if capture:
                a = self.entity_map(caps, entity.positions).cpu()
                attn_sum, n_caps = (a if attn_sum is None else attn_sum + a), n_caps + 1
                entity.attention = attn_sum / n_caps
                mask = attention_to_mask(entity.attention, h, w, entity.threshold, entity.top_fraction,
                                         entity.smooth)
                entity.used_mask = mask
            vs = [self.model.llm2vae(hid[b * n + 1:(b + 1) * n - 1]).float() for b in range(len(ctxs))]
            v_c = vs[0]
            v_t = vs[1] if use_t else None
            v_i = vs[-1] if use_i else None
            if velocity_hook is not None:
                v = velocity_hook(v_c, v_t, v_i, s_t, s_i)
            elif entity is not None and mask is not None:
                v = guided_velocity(v_c, v_t, v_i, s_t, s_i, entity.scale, mask.to(v_c.device),
                                    sampler.cfg_renorm_type, sampler.cfg_renorm_min, sampler.bagel_compat)
            else:
                v = combine_cfg(v_c, v_t, v_i, s_t, s_i, sampler.cfg_renorm_type, sampler.cfg_renorm_min,
                                sampler.bagel_compat)
            if trace is not None:
                trace.setdefault("v", []).append(v)
                trace.setdefault("branches", []).append((v_c, v_t, v_i))
            x = euler_step(x, v.to(x.device), ts[i], ts[i + 1])
            if callback is not None:
                callback(i + 1, sampler.num_timesteps - 1)
        return x

    @torch.no_grad()
    def decode_latents(self, tokens: Tensor, h: int, w: int) -> tuple[Tensor, Image.Image]:
        """Latent tokens → (uint8 [H, W, 3], PIL image)."""
        lat = unpatchify_latent(tokens.float(), h, w, self.cfg.latent_patch_size)
        img = decoded_to_uint8(self.vae.decode(lat[None].to(self.device))[0].float().cpu())
        return img, Image.fromarray(img.numpy())
