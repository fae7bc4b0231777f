"""Packed attention behind one function, three backends.

Every pattern loom needs — training packs with causal / full / noise splits, KV-cached prefill and decoding,
and several CFG branches batched into one varlen pass — is described by per-token metadata (`MaskSpec`):

    allowed(q, k) = doc(q) == doc(k)
                    AND ( pos(k) <= pos(q)  OR  (split(k) == split(q) AND q's split is full/noise) )
                    AND NOT ( k is in a noise split AND split(k) != split(q) )

`pos` is the index inside the document's key sequence (cached keys first), so a query block appended after a
cache sees the whole prefix — flash-attn's bottom-right causal alignment. This is bagel-spec §3.4 (flex path).

Backends: `sdpa` (explicit dense boolean mask; CPU and tests), `flex` (block mask, GPU default) and `flash`
(flash-attn varlen, when installed; only for specs where each document is one causal or one full block,
which is every inference pass). They agree within float tolerance (tests/model/test_attention.py).
Each piece of work is done once per forward: a spec's per-document masks and its flex block mask are built on
first use and shared by every layer; GQA runs natively (`enable_gqa`, flex/flash GQA), never by repeating K/V.

KV-cached inference does not use a spec: `attention_cached` attends each query block to its own cached keys
plus itself, reading the cache where it lies (`CachedBlocks`, `LayerKV`), so cached K/V are never concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor

MODE_CAUSAL, MODE_FULL, MODE_NOISE = 0, 1, 2
MODE_IDS = {"causal": MODE_CAUSAL, "full": MODE_FULL, "noise": MODE_NOISE}


@dataclass
class MaskSpec:
    """Token metadata for queries [Lq] and keys [Lk]. Split ids are global (unique across documents)."""

    q_doc: Tensor
    q_pos: Tensor
    q_split: Tensor
    q_mode: Tensor
    k_doc: Tensor
    k_pos: Tensor
    k_split: Tensor
    k_noise: Tensor  # bool: key belongs to a noise split

    def dense(self) -> Tensor:
        """Boolean [Lq, Lk] mask, True = may attend."""
        same_doc = self.q_doc[:, None] == self.k_doc[None, :]
        earlier = self.k_pos[None, :] <= self.q_pos[:, None]
        same_split = self.q_split[:, None] == self.k_split[None, :]
        bidir = (self.q_mode != MODE_CAUSAL)[:, None] & same_split
        hidden = self.k_noise[None, :] & ~same_split
        return same_doc & (earlier | bidir) & ~hidden

    def to(self, device: torch.device | str) -> MaskSpec:
        return MaskSpec(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def document_runs(self) -> tuple[list[int], list[int]] | None:
        """(query count, key count) per document when queries and keys are the same sequence of contiguous,
        distinct document runs — every training pack and every batched inference pass; None otherwise."""
        docs_q, counts_q = torch.unique_consecutive(self.q_doc, return_counts=True)
        docs_k, counts_k = torch.unique_consecutive(self.k_doc, return_counts=True)
        if (docs_q.numel() != docs_k.numel() or not torch.equal(docs_q, docs_k)
                or docs_q.unique().numel() != docs_q.numel()):
            return None
        return counts_q.tolist(), counts_k.tolist()

    @cached_property
    def document_blocks(self) -> list[tuple[slice, slice, Tensor | None]] | None:
        """Per document (q slice, k slice, its dense mask — None when every key is allowed, so SDPA can take
        its unmasked fused kernel), or None when `document_runs` is None. Tokens of different documents never
        attend to each other, so attention per document is exact and costs Σ L_i² instead of (Σ L_i)²: on a
        1536-token pack of ~6 samples that is ~5× less attention work. Cached: all layers of one forward share
        the spec."""
        runs = self.document_runs()
        if runs is None:
            return None
        blocks, q0, k0 = [], 0, 0
        for nq, nk in zip(*runs):
            sq, sk = slice(q0, q0 + nq), slice(k0, k0 + nk)
            sub = MaskSpec(self.q_doc[sq], self.q_pos[sq], self.q_split[sq], self.q_mode[sq],
                           self.k_doc[sk], self.k_pos[sk], self.k_split[sk], self.k_noise[sk])
            m = sub.dense()
            blocks.append((sq, sk, None if bool(m.all()) else m))
            q0, k0 = q0 + nq, k0 + nk
        return blocks

    def flex_block_mask(self, block_size: int, device: torch.device):
        """The flex `BlockMask` of this spec over queries / keys padded to `block_size`, built once per spec (and
        so once per forward: every layer shares it) — compiled on CUDA, eager elsewhere."""
        cache = self.__dict__.setdefault("_flex_masks", {})
        key = (block_size, str(device))
        if key not in cache:
            cache[key] = _build_block_mask(self, block_size, device)
        return cache[key]

    def varlen_layout(self) -> tuple[Tensor, Tensor, int, int, bool] | None:
        """(cu_q, cu_k, max_q, max_k, causal) when every document is one causal or one full query block
        appended at the end of its keys and no noise keys exist — the only shapes flash-attn varlen can express."""
        if bool(self.k_noise.any()):
            return None
        runs = self.document_runs()
        if runs is None:
            return None
        counts_q, counts_k = runs
        modes = self.q_mode.unique()
        if modes.numel() != 1:
            return None
        causal = int(modes) == MODE_CAUSAL
        if not causal and self.q_split.unique_consecutive().numel() != len(counts_q):
            return None  # a full document must be one split
        cu_q = torch.tensor([0, *counts_q], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        cu_k = torch.tensor([0, *counts_k], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return cu_q, cu_k, max(counts_q), max(counts_k), causal


def spec_from_splits(sample_lens: list[int], split_lens: list[int], attn_modes: list[str],
                     device: torch.device | str = "cpu") -> MaskSpec:
    """MaskSpec of a training pack (queries = keys = the whole pack)."""
    doc = torch.repeat_interleave(torch.arange(len(sample_lens)), torch.tensor(sample_lens))
    starts = torch.tensor([0] + list(sample_lens[:-1])).cumsum(0)
    pos = torch.arange(int(sum(sample_lens))) - torch.repeat_interleave(starts, torch.tensor(sample_lens))
    split = torch.repeat_interleave(torch.arange(len(split_lens)), torch.tensor(split_lens))
    mode_per_split = torch.tensor([MODE_IDS[m] for m in attn_modes])
    mode = mode_per_split[split]
    spec = MaskSpec(doc, pos, split, mode, doc, pos, split, mode == MODE_NOISE)
    return spec.to(device)


def _sdpa_dense(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """q [Lq, H, d], k/v [Lk, Hkv, d]; query head h uses KV head h // (H / Hkv) (official GQA convention), which
    is SDPA's native GQA: no repeated K/V copies. `mask` None = every key allowed."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
        attn_mask=None if mask is None else mask[None, None], enable_gqa=q.shape[1] != k.shape[1],
    )
    return out[0].transpose(0, 1)


def attention_sdpa(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec) -> Tensor:
    """q [Lq, H, d], k/v [Lk, Hkv, d] → [Lq, H, d]. Dense mask per document (`MaskSpec.document_blocks`), or one
    dense mask over everything when the documents are not contiguous; rows with no allowed key give zeros."""
    blocks = spec.document_blocks
    if blocks is None:
        return _sdpa_dense(q, k, v, spec.dense())
    if len(blocks) == 1:
        return _sdpa_dense(q, k, v, blocks[0][2])
    return torch.cat([_sdpa_dense(q[sq], k[sk], v[sk], m) for sq, sk, m in blocks])


_flex_compiled = None


def _build_block_mask(spec: MaskSpec, block_size: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    lq, lk = spec.q_doc.numel(), spec.k_doc.numel()
    pq, pk = (-lq) % block_size, (-lk) % block_size
    # padding keys/queries get a private document id so they never mix with real tokens
    qd = F.pad(spec.q_doc, (0, pq), value=-1)
    kd = F.pad(spec.k_doc, (0, pk), value=-2)
    qp, kp = F.pad(spec.q_pos, (0, pq)), F.pad(spec.k_pos, (0, pk))
    qs, ks = F.pad(spec.q_split, (0, pq), value=-1), F.pad(spec.k_split, (0, pk), value=-2)
    qm = F.pad(spec.q_mode, (0, pq))
    kn = F.pad(spec.k_noise, (0, pk))

    def mask_mod(b, h, qi, ki):
        same_split = qs[qi] == ks[ki]
        ok = (kp[ki] <= qp[qi]) | ((qm[qi] != MODE_CAUSAL) & same_split)
        return (qd[qi] == kd[ki]) & ok & ~(kn[ki] & ~same_split) | ((qd[qi] == -1) & (ki == 0))

    return create_block_mask(mask_mod, None, None, lq + pq, lk + pk, device=device, BLOCK_SIZE=block_size,
                             _compile=torch.device(device).type == "cuda")


def attention_flex(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, block_size: int = 128) -> Tensor:
    """Flex attention with the spec's block mask (sparse: skips fully masked blocks; built once per spec)."""
    from torch.nn.attention.flex_attention import flex_attention

    global _flex_compiled
    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=False) if q.is_cuda else flex_attention
    lq, lk = q.shape[0], k.shape[0]
    pq, pk = (-lq) % block_size, (-lk) % block_size
    bm = spec.flex_block_mask(block_size, q.device)
    qq = F.pad(q, (0, 0, 0, 0, 0, pq)).transpose(0, 1)[None]
    kk = F.pad(k, (0, 0, 0, 0, 0, pk)).transpose(0, 1)[None]
    vv = F.pad(v, (0, 0, 0, 0, 0, pk)).transpose(0, 1)[None]
    out = _flex_compiled(qq, kk, vv, block_mask=bm, enable_gqa=q.shape[1] != k.shape[1])
    return out[0].transpose(0, 1)[:lq]


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def attention_flash(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec) -> Tensor:
    from flash_attn import flash_attn_varlen_func

    layout = spec.varlen_layout()
    if layout is None:
        raise ValueError("flash-attn varlen cannot express this mask (noise splits or mixed modes); use flex or sdpa")
    cu_q, cu_k, mq, mk, causal = layout
    return flash_attn_varlen_func(q, k, v, cu_q.to(q.device), cu_k.to(q.device), mq, mk, causal=causal)


# ---- KV-cached inference ----------------------------------------------------------------------------------------
@dataclass
class CachedBlocks:
    """Layout of a KV-cached forward: query block b is the next `q_lens[b]` packed rows; it attends to its own
    `past_lens[b]` cached keys and to itself — all of it for a full block (image tokens), bottom-right causal for
    a causal block (text: new token i sees the cache and new tokens ≤ i). Blocks never see each other."""

    q_lens: list[int]
    past_lens: list[int]
    causal: list[bool]

    def mask(self, b: int, device: torch.device) -> Tensor | None:
        """Block b's mask [n, p + n] (None = everything allowed), built once per forward for all layers."""
        if not self.causal[b]:
            return None
        masks = self.__dict__.setdefault("_masks", {})
        if (b, str(device)) not in masks:
            masks[(b, str(device))] = _causal_after(self.q_lens[b], self.past_lens[b], device)
        return masks[(b, str(device))]


@dataclass
class LayerKV:
    """One layer's K/V buffers for a KV-cached forward, one per query block: keys[b] / values[b] [p_b + n_b, Hkv,
    d] hold the block's cached K/V (post-norm, post-RoPE) in rows [0, p_b); rows [p_b, p_b + n_b) receive its new
    K/V, written in place — the only copy made. None: no cached keys (the new K/V are attended where they are).
    Several blocks may share one buffer (the same context twice): they are processed one after the other."""

    keys: list[Tensor | None]
    values: list[Tensor | None]


def _causal_after(n: int, p: int, device: torch.device) -> Tensor | None:
    """[n, p + n] bottom-right causal mask (None when it allows everything: a single new token)."""
    if n == 1:
        return None
    return torch.ones(n, p + n, dtype=torch.bool, device=device).tril(diagonal=p)


def _attend_block(q: Tensor, k: Tensor, v: Tensor, blocks: CachedBlocks, b: int, backend: str) -> Tensor:
    if backend == "flash" and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        # causal is bottom-right aligned (flash-attn ≥ 2.1); GQA is native
        from flash_attn import flash_attn_func

        return flash_attn_func(q[None], k[None], v[None], causal=blocks.causal[b])[0]
    # sdpa, and flex too: a cached block's mask is either empty or bottom-right causal, which SDPA's fused
    # kernels run without a block mask
    return _sdpa_dense(q, k, v, blocks.mask(b, q.device))


def attention_cached(q: Tensor, k: Tensor, v: Tensor, blocks: CachedBlocks, kv: LayerKV | None,
                     backend: str = "sdpa", keep_keys: bool = False
                     ) -> tuple[Tensor, list[tuple[Tensor, Tensor]], list[Tensor] | None]:
    """q [Lq, H, d], new k/v [Lq, Hkv, d] packed in block order → (out [Lq, H, d], per block its new (k, v) as
    stored — the buffer rows it was written to, or its packed rows when the buffer is shared with a later block —,
    per block the keys it attended [p + n, Hkv, d] when `keep_keys` (copies; attention capture only))."""
    outs, stored, attended, r = [], [], [] if keep_keys else None, 0
    bufs = kv.keys if kv is not None else [None] * len(blocks.q_lens)
    last_user = {id(buf): b for b, buf in enumerate(bufs) if buf is not None}
    for b, (n, p) in enumerate(zip(blocks.q_lens, blocks.past_lens)):
        kb, vb = k[r:r + n], v[r:r + n]
        new = (kb, vb)
        if bufs[b] is not None:
            kbuf, vbuf = kv.keys[b], kv.values[b]
            kbuf[p:p + n].copy_(kb)
            vbuf[p:p + n].copy_(vb)
            kb, vb = kbuf[:p + n], vbuf[:p + n]
            if last_user[id(kbuf)] == b:
                new = (kbuf[p:p + n], vbuf[p:p + n])
        outs.append(_attend_block(q[r:r + n], kb, vb, blocks, b, backend))
        if keep_keys:
            attended.append(kb.clone())
        stored.append(new)
        r += n
    return (outs[0] if len(outs) == 1 else torch.cat(outs)), stored, attended


BACKENDS = ("sdpa", "flex", "flash")


def default_backend(device: torch.device) -> str:
    return "flex" if device.type == "cuda" else "sdpa"


def attention(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, backend: str = "sdpa") -> Tensor:
    """Joint attention over a packed sequence. q [Lq, H, d]; k, v [Lk, Hkv, d]; returns [Lq, H, d]."""
    if backend == "sdpa":
        return attention_sdpa(q, k, v, spec)
    if backend == "flex":
        return attention_flex(q, k, v, spec)
    if backend == "flash":
        if spec.varlen_layout() is None:  # training packs with noise splits: fall back, same numbers
            return attention_flex(q, k, v, spec) if q.is_cuda else attention_sdpa(q, k, v, spec)
        return attention_flash(q, k, v, spec)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
