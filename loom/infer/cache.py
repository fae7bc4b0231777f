"""Inference contexts over a shared, append-only KV store: a context is a list of row ranges of KV pages.

Contexts are persistent values: `append` returns a new context and never changes the old one, so a CFG branch,
a plan prefix or the history of the previous frame is shared by later steps without re-encoding (the paper's
prefix reuse, §3.2) — and now without copying either: contexts that share a prefix reference the same stored
rows (one copy in memory), and a page is freed as soon as no context references it (frames dropped from the
sparse history, evicted prefixes).

- `KVPage`: per layer, keys and values [capacity, Hkv, d] in the model's dtype (bf16 on GPU). Rows [0, used)
  are written once and never change; rows past `used` are scratch where a forward writes a query block's K/V.
- `Context`: (page, start, end) segments + the next RoPE id. Appending to a context that ends at its page's tip
  claims the rows the forward already wrote there (no copy); otherwise the new rows go to a new page (one copy
  of the new tokens' K/V), so a branch never disturbs the contexts it shares rows with.
- `attention_buffers`: what one forward attends — a view of the page when the context is one segment at a page
  tip with room for the new rows (no copy), else one gathered copy (a workspace) with room after it. SDPA needs
  each block's keys contiguous, and the reduction over them must stay exactly today's for bit parity, so a
  context spread over several pages is gathered once — per denoised image, not per step (`Engine`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import Tensor


class KVPage:
    """Append-only K/V rows of every layer; `writes` counts scratch writes (a claim must follow its own)."""

    __slots__ = ("keys", "values", "used", "writes", "__weakref__")

    def __init__(self, keys: list[Tensor], values: list[Tensor], used: int) -> None:
        self.keys, self.values, self.used, self.writes = keys, values, used, 0

    @classmethod
    def empty_like(cls, like: list[tuple[Tensor, Tensor]], capacity: int) -> KVPage:
        """A page with room for `capacity` rows, per layer on the device / dtype of `like`'s (k, v)."""
        return cls([k.new_empty((capacity, *k.shape[1:])) for k, _ in like],
                   [v.new_empty((capacity, *v.shape[1:])) for _, v in like], 0)

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass(frozen=True)
class Segment:
    page: KVPage
    start: int
    end: int


@dataclass
class BlockKV:
    """The new K/V of one forward block, per layer [(k [n, Hkv, d], v)]. `slot` = (page, row, write id) when they
    were written in place at `page`'s scratch rows from `row` on, so that appending claims them without a copy."""

    layers: list[tuple[Tensor, Tensor]]
    slot: tuple[KVPage, int, int] | None = None

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.layers[i]


@dataclass(frozen=True)
class Context:
    """A cached sequence: `segments` of KV pages (post-QK-norm, post-RoPE); `rope` = next position id."""

    segments: tuple[Segment, ...] = ()
    rope: int = 0
    log: tuple[str, ...] = field(default=())  # what was added, for result.json and debugging

    @property
    def kv_len(self) -> int:
        return sum(s.end - s.start for s in self.segments)

    @property
    def nbytes(self) -> int:
        """Bytes of the K/V rows this context attends (a concatenating cache held this much per context)."""
        return sum(_row_bytes(s.page) * (s.end - s.start) for s in self.segments)

    def tip_room(self) -> int:
        """Free rows right after this context when it is one segment ending at its page's tip, else 0."""
        if len(self.segments) != 1:
            return 0
        s = self.segments[0]
        return s.page.capacity - s.end if s.end == s.page.used else 0

    def append(self, new_kv: BlockKV | list[tuple[Tensor, Tensor]], rope_advance: int, what: str) -> Context:
        """Context + rows `new_kv` (per layer (k, v) [n, Hkv, d]): claimed in place when the forward wrote them at
        this context's page tip, else stored in a new page (one copy)."""
        n = int(new_kv[0][0].shape[0])
        slot = new_kv.slot if isinstance(new_kv, BlockKV) else None
        last = self.segments[-1] if self.segments else None
        if slot is not None:
            page, row, write = slot
            if page.writes != write:
                raise RuntimeError("the block's K/V were overwritten by a later forward on the same context; "
                                   "append right after the forward")
            if last is not None and last.page is page and last.end == row == page.used:
                page.used += n
                return self._grown((*self.segments[:-1], Segment(page, last.start, row + n)), rope_advance, what)
        page = KVPage.empty_like(list(new_kv), n)
        for i, (k, v) in enumerate(new_kv):
            page.keys[i].copy_(k)
            page.values[i].copy_(v)
        page.used = n
        return self._grown((*self.segments, Segment(page, 0, n)), rope_advance, what)

    def _grown(self, segments: tuple[Segment, ...], rope_advance: int, what: str) -> Context:
        return Context(segments, self.rope + rope_advance, (*self.log, what))

    def with_room(self, n: int) -> Context:
        """The same context as one segment at a page tip with ≥ `n` free rows after it (one copy unless it already
        is): text decoding then appends token after token in place."""
        if not self.segments or self.tip_room() >= n:
            return self
        p = self.kv_len
        first = self.segments[0].page
        page = KVPage.empty_like(list(zip(first.keys, first.values)), p + n)
        _gather(self.segments, page.keys, page.values)
        page.used = p
        return Context((Segment(page, 0, p),), self.rope, self.log)

    def truncated(self, n: int, rope: int, log: tuple[str, ...]) -> Context:
        """The first `n` rows of this context as a context of its own (shares the pages)."""
        segs, left = [], n
        for s in self.segments:
            if left <= 0:
                break
            take = min(left, s.end - s.start)
            segs.append(Segment(s.page, s.start, s.start + take))
            left -= take
        return Context(tuple(segs), rope, log)


def _row_bytes(page: KVPage) -> int:
    return sum(t[0].numel() * t.element_size() for t in (*page.keys, *page.values))


def _gather(segments: Iterable[Segment], keys: list[Tensor], values: list[Tensor]) -> None:
    r = 0
    for s in segments:
        n = s.end - s.start
        for i in range(len(keys)):
            keys[i][r:r + n].copy_(s.page.keys[i][s.start:s.end])
            values[i][r:r + n].copy_(s.page.values[i][s.start:s.end])
        r += n


@dataclass
class Buffers:
    """Per layer, the keys / values [p + n, Hkv, d] one block attends: cached rows first, room for n new rows.
    `slot` = (page, row) when they are a view of a page tip (the new rows land in its scratch), None for a
    gathered workspace; `copied` = bytes of cached K/V copied to make them (0 for a view)."""

    keys: list[Tensor]
    values: list[Tensor]
    slot: tuple[KVPage, int] | None
    copied: int


def attention_buffers(ctx: Context, n: int) -> Buffers | None:
    """What a block of `n` new tokens on top of `ctx` attends (None for an empty context: nothing cached)."""
    if not ctx.segments:
        return None
    p = ctx.kv_len
    if ctx.tip_room() >= n:
        s = ctx.segments[0]
        return Buffers([k[s.start:s.end + n] for k in s.page.keys], [v[s.start:s.end + n] for v in s.page.values],
                       (s.page, s.end), 0)
    first = ctx.segments[0].page
    keys = [k.new_empty((p + n, *k.shape[1:])) for k in first.keys]
    values = [v.new_empty((p + n, *v.shape[1:])) for v in first.values]
    _gather(ctx.segments, keys, values)
    return Buffers(keys, values, None, ctx.nbytes)


def held_bytes(contexts: Iterable[Context]) -> int:
    """Bytes of the distinct pages the contexts keep alive (capacity, i.e. what is allocated)."""
    pages = {id(s.page): s.page for c in contexts for s in c.segments}
    return sum(p.nbytes for p in pages.values())

