"""Mixture-of-Transformers decoder layer (BAGEL's `Qwen2MoTDecoderLayer`) and its dense twin.

Every token goes through exactly one expert — understanding (text, markers, ViT tokens: the original Qwen
weights) or generation (VAE latent tokens: the `*_moe_gen` twins) — for its norms, q/k/v/o projections,
q/k-norms and MLP, while attention is ONE softmax over the whole packed sequence (bagel-spec §2.3).
Parameter names match the release's `ema.safetensors` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import CachedBlocks, LayerKV, MaskSpec, attention, attention_cached
from .configs import LLMConfig
from .layers import RMSNorm, SwiGLU, apply_rope


@dataclass
class Routing:
    """Which rows of a packed hidden state go to which expert. `gen_idx` empty ⇒ all understanding."""

    und_idx: Tensor  # [N_und] int64
    gen_idx: Tensor  # [N_gen] int64
    length: int
    # BAGEL's freeze_und (bagel-spec §2.4): understanding-token activations are detached after every routed op,
    # so no gradient reaches und weights and generation tokens see und K/V as constants.
    detach_und: bool = False
    # training: run both experts even on zero rows, so every expert weight gets a gradient (exactly zero when
    # unused) and FSDP2 ranks holding different tasks reduce the same set of gradients (`Loom._unused`)
    all_experts: bool = False

    @classmethod
    def from_gen_mask(cls, gen_mask: Tensor, detach_und: bool = False, all_experts: bool = False) -> Routing:
        return cls(torch.nonzero(~gen_mask).squeeze(1), torch.nonzero(gen_mask).squeeze(1), int(gen_mask.numel()),
                   detach_und, all_experts)

    def apply(self, x: Tensor, f_und, f_gen) -> Tensor:
        """out[und] = f_und(x[und]); out[gen] = f_gen(x[gen]) (cheap path when one side is empty)."""
        if self.gen_idx.numel() == 0 and not self.all_experts:
            y = f_und(x)
            return y.detach() if self.detach_und else y
        if self.und_idx.numel() == 0 and not self.all_experts:
            return f_gen(x)
        yu, yg = f_und(x[self.und_idx]), f_gen(x[self.gen_idx])
        if self.detach_und:
            yu = yu.detach()
        out = yu.new_empty((self.length, *yu.shape[1:]))
        out[self.und_idx] = yu
        out[self.gen_idx] = yg.to(yu.dtype)
        return out


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig, mot: bool) -> None:
        super().__init__()
        d, h, hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        self.num_heads, self.num_kv_heads, self.head_dim = h, hkv, d
        self.mot = mot
        suffixes = ["", "_moe_gen"] if mot else [""]
        for s in suffixes:
            setattr(self, f"q_proj{s}", nn.Linear(cfg.hidden_size, h * d, bias=cfg.attention_bias))
            setattr(self, f"k_proj{s}", nn.Linear(cfg.hidden_size, hkv * d, bias=cfg.attention_bias))
            setattr(self, f"v_proj{s}", nn.Linear(cfg.hidden_size, hkv * d, bias=cfg.attention_bias))
            setattr(self, f"o_proj{s}", nn.Linear(h * d, cfg.hidden_size, bias=False))
            if cfg.qk_norm:
                setattr(self, f"q_norm{s}", RMSNorm(d, cfg.rms_norm_eps))
                setattr(self, f"k_norm{s}", RMSNorm(d, cfg.rms_norm_eps))
        self.qk_norm = cfg.qk_norm
        # Opt-in attention capture (inference analysis, e.g. localised entity CFG): None = off, zero cost. When a
        # dict, each forward stores capture["q"] = q[capture.get("q_rows", :)] [n, H, d] (post-norm, post-RoPE)
        # and capture["k"] = keys[capture.get("k_rows", :)] [m, Hkv, d], keys = every block's attended keys
        # (its cached keys, then its new ones) one block after the other.
        self.capture: dict | None = None

    def _qkv(self, x: Tensor, s: str) -> Tensor:
        n = x.shape[0]
        q = getattr(self, f"q_proj{s}")(x).view(n, self.num_heads, self.head_dim)
        k = getattr(self, f"k_proj{s}")(x).view(n, self.num_kv_heads, self.head_dim)
        v = getattr(self, f"v_proj{s}")(x).view(n, self.num_kv_heads, self.head_dim)
        if self.qk_norm:  # RMSNorm over the head dim, before RoPE
            q, k = getattr(self, f"q_norm{s}")(q), getattr(self, f"k_norm{s}")(k)
        return torch.cat([q, k, v], dim=1)

    def forward(self, x: Tensor, route: Routing, cos: Tensor, sin: Tensor, spec: MaskSpec | None, backend: str,
                kv: LayerKV | None = None, blocks: CachedBlocks | None = None, return_kv: bool = True):
        """x [L, D] → (out [L, D], new K/V). Training (`blocks` None): one masked attention over the pack (`spec`);
        the new K/V are (k, v) [L, Hkv, d] post-norm post-RoPE, or None when `return_kv` is False (returning views
        would only upset FSDP2). KV-cached inference (`blocks` given, `kv` the cached buffers): every block attends
        to its cache plus itself (`attention_cached`); the new K/V are one (k, v) per block, as stored."""
        gen = "_moe_gen" if self.mot else ""
        qkv = route.apply(x, lambda t: self._qkv(t, ""), lambda t: self._qkv(t, gen))
        h, hkv = self.num_heads, self.num_kv_heads
        q, k, v = qkv[:, :h], qkv[:, h:h + hkv], qkv[:, h + hkv:]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cap = self.capture
        if blocks is None:
            o, new_kv = attention(q, k, v, spec, backend), ((k, v) if return_kv else None)
            keys = k
        else:
            o, new_kv, attended = attention_cached(q, k, v, blocks, kv, backend, keep_keys=cap is not None)
            keys = torch.cat(attended) if cap is not None else None
        if cap is not None:
            # clones: a row slice must not keep the whole packed q / every block's keys alive
            cap["q"] = q[cap.get("q_rows", slice(None))].detach().clone()
            cap["k"] = keys[cap.get("k_rows", slice(None))].detach().clone()
        out = route.apply(o.reshape(x.shape[0], h * self.head_dim), self.o_proj, getattr(self, f"o_proj{gen}"))
        return out, new_kv


class DecoderLayer(nn.Module):
    """Pre-norm Qwen2 layer; with `mot=True` every norm, projection and MLP has a generation-expert twin."""

    def __init__(self, cfg: LLMConfig, mot: bool = True) -> None:
        super().__init__()
        self.mot = mot
        self.self_attn = Attention(cfg, mot)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if mot:
            self.mlp_moe_gen = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
            self.input_layernorm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.post_attention_layernorm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def _twin(self, name: str) -> nn.Module:
        return getattr(self, f"{name}_moe_gen") if self.mot else getattr(self, name)

    def forward(self, x: Tensor, route: Routing, cos: Tensor, sin: Tensor, spec: MaskSpec | None, backend: str,
                kv: LayerKV | None = None, blocks: CachedBlocks | None = None, return_kv: bool = True):
        n = route.apply(x, self.input_layernorm, self._twin("input_layernorm"))
        a, kv = self.self_attn(n, route, cos, sin, spec, backend, kv, blocks, return_kv)
        x = x + a
        m = route.apply(
            x, lambda t: self.mlp(self.post_attention_layernorm(t)),
            lambda t: self._twin("mlp")(self._twin("post_attention_layernorm")(t)),
        )
        return x + m, kv

    @torch.no_grad()
    def init_moe_from_und(self) -> None:
        """BAGEL's `copy_init_moe`: start every generation-expert tensor as a copy of its understanding twin."""
        if not self.mot:
            return
        for name, p in self.named_parameters():
            if "_moe_gen" in name:
                p.copy_(self.get_parameter(name.replace("_moe_gen", "")))


class MoTDecoderLayer(DecoderLayer):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__(cfg, mot=True)


class DenseDecoderLayer(DecoderLayer):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__(cfg, mot=False)
