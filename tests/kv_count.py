"""Counting the K/V work of a forward at the aten level (imported by name: tests/ is on sys.path via conftest).

`KVCopyCounter` watches every aten op while active:
- `kv_bytes`: bytes written by copy-like ops (copy_, cat/stack along rows, index_put_, clone, index, …) whose
  output holds K/V rows (trailing dims (Hkv, d)) — concatenating a cache, merging it with new tokens or writing
  new tokens into it all count; the rotary rotate-half (a cat along the head dim) does not, it computes;
- `repeats`: K/V repeated over query heads for GQA — an expand to [.., Hkv, g, d] materialised by a copy, or an
  index_select / index from (Hkv, d) rows to (H, d) rows (how `repeat_interleave` lowers)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_COPIES = {aten.copy_.default, aten.cat.default, aten.stack.default, aten.index_put_.default,
           aten.index_put.default, aten.clone.default, aten._to_copy.default, aten.index.Tensor,
           aten.index_select.default, aten.index_copy_.default, aten.index_copy.default}


class KVCopyCounter(TorchDispatchMode):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.h, self.hkv, self.d = num_heads, num_kv_heads, head_dim
        self.kv_bytes = 0
        self.repeats = 0

    def _kv_rows(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t.dim() >= 2 and tuple(t.shape[-2:]) == (self.hkv, self.d)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _COPIES:
            res = args[0] if func in (aten.copy_.default, aten.index_put_.default, aten.index_copy_.default) else out
            along_head_dim = func in (aten.cat.default, aten.stack.default) and \
                (args[1] if len(args) > 1 else kwargs.get("dim", 0)) in (-1, res.dim() - 1)
            if func in (aten.copy_.default,):
                written = args[1].numel() * args[1].element_size() if self._kv_rows(res) else 0
            else:
                written = res.numel() * res.element_size() if self._kv_rows(res) else 0
            if not along_head_dim:
                self.kv_bytes += written
            g = self.h // self.hkv
            if g > 1 and isinstance(out, torch.Tensor) and out.dim() >= 3:
                if tuple(out.shape[-3:]) == (self.hkv, g, self.d):  # expand(...).clone(): repeat_interleave
                    self.repeats += 1
                src = args[0] if args else None
                if func in (aten.index_select.default, aten.index.Tensor) and self._kv_rows(src) and \
                        tuple(out.shape[-2:]) == (self.h, self.d):
                    self.repeats += 1
        return out
