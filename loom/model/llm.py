"""The decoder stack with Qwen2-compatible names: `language_model.model.{embed_tokens,layers,norm,norm_moe_gen}`
and an untied `language_model.lm_head`. It consumes already-embedded packed tokens so that training and the
KV-cached inference engine share one code path."""

from __future__ import annotations

from torch import Tensor, nn

from .attention import CachedBlocks, LayerKV, MaskSpec
from .configs import LLMConfig
from .layers import RMSNorm, rope_cos_sin
from .mot import DecoderLayer, Routing


class DecoderStack(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, mot=cfg.mot) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.mot:
            self.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LanguageModel(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = DecoderStack(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.freeze_und = False  # BAGEL's freeze_und: detach understanding activations (set by loom.train.optim)

    def forward(self, x: Tensor, position_ids: Tensor, route: Routing, spec: MaskSpec | None, backend: str = "sdpa",
                kv: list[LayerKV] | None = None, blocks: CachedBlocks | None = None,
                return_kv: bool = True) -> tuple[Tensor, list]:
        """x [L, D] embedded tokens, position_ids [L] → (final-normed hidden [L, D], per-layer new K/V of x).

        Training: `spec` masks the pack. KV-cached inference: `blocks` lays out the query blocks and `kv` gives
        each layer's cache buffers (`attention_cached`); a layer's new K/V is then one (k, v) per block.
        """
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        new_kv = []
        for i, layer in enumerate(self.model.layers):
            x, layer_kv = layer(x, route, cos, sin, spec, backend, kv[i] if kv is not None else None, blocks,
                                return_kv)
            if return_kv:
                new_kv.append(layer_kv)
        norm_gen = self.model.norm_moe_gen if self.config.mot else self.model.norm
        return route.apply(x, self.model.norm, norm_gen), new_kv
