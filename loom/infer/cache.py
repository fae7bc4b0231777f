"""Inference contexts: a per-layer KV cache of one sequence plus its next RoPE id.

Contexts are persistent values: `append` returns a new context and never mutates the old one, so a CFG branch
or a plan prefix can be shared by later steps without re-encoding (the paper's prefix reuse, §3.2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Context:
    """keys/values: one [kv_len, Hkv, d] tensor per layer (post-QK-norm, post-RoPE); `rope` = next position id."""

    keys: tuple[Tensor, ...] = ()
    values: tuple[Tensor, ...] = ()
    rope: int = 0
    log: tuple[str, ...] = field(default=())  # what was added, for result.json and debugging

    @property
    def kv_len(self) -> int:
        return int(self.keys[0].shape[0]) if self.keys else 0

    def append(self, new_kv: list[tuple[Tensor, Tensor]], rope_advance: int, what: str) -> Context:
        if self.keys:
            keys = tuple(torch.cat([old, k]) for old, (k, _) in zip(self.keys, new_kv))
            values = tuple(torch.cat([old, v]) for old, (_, v) in zip(self.values, new_kv))
        else:
            keys, values = tuple(k for k, _ in new_kv), tuple(v for _, v in new_kv)
        return Context(keys, values, self.rope + rope_advance, (*self.log, what))

    def layer_past(self, i: int) -> tuple[Tensor, Tensor] | None:
        return (self.keys[i], self.values[i]) if self.keys else None
