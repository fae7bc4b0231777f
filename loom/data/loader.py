"""Training data stream: weighted task mixing, rank × worker sharding, packing to a token budget, exact resume.

Everything random is a pure function of integers, so the stream position is a handful of ints:
  * source order: a permutation of each source's rows per epoch (seeded by `seed`, source, epoch), then
    sharded `perm[shard::num_shards]` with shard = rank·W + logical worker;
  * which source feeds record n of a shard: a weighted draw seeded by (seed, shard, n);
  * a record's plans (builders may pick e.g. a tutorial frame): `random.Random(seed, source, epoch, row)`;
  * each sample's CFG dropout, timestep logits and flow noise: seeded by the sample key (`sample_seed`), so a
    sample is treated identically whichever rank, pack or micro-batch it lands in — this is what makes
    1-process vs N-process and accumulation-vs-batch runs comparable.
The state saved with a checkpoint is, per logical worker, that position; `DataLoader` workers are rotated on
resume so the round-robin continues with the worker that was next.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import MISSING
from .packing import CondDropout, PackGeometry, pack_sequences
from .tokenizer import SpecialTokens
from .types import PackedBatch, PlanItem, SequencePlan

log = logging.getLogger("loom.data")


@dataclass
class SourceConfig:
    path: str = MISSING  # manifest (.jsonl / .parquet / folder) or "synthetic"
    format: str = "auto"  # auto | jsonl | parquet | hf | synthetic
    weight: float = 1.0  # relative sampling weight among sources (task mixing)
    split: str = "train"  # HF datasets split
    num_rows: int = 64  # synthetic only: rows in the source
    image_size: int = 32  # synthetic only: VAE image side in pixels
    # BuildConfig overrides for this source only, merged over data.build (e.g. the same tutorial manifest once as
    # frame instances and once as plan-only instances: {frames_per_visit: 0})
    build: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    batch_size: int = 1  # max samples per pack (per rank, per micro-step)
    max_tokens: int = 11520  # token budget of one pack (BAGEL fine-tune: max_num_tokens 11520)
    max_tokens_per_sample: int = 10240  # longer samples are skipped and logged
    num_workers: int = 0  # DataLoader worker processes per rank (0: in-process)
    prefetch_factor: int = 2
    seed: int = 42
    shuffle: bool = True
    text_cond_dropout: float = 0.1  # BAGEL ModelArguments defaults (bagel-spec §4.2)
    vit_cond_dropout: float = 0.3
    vae_cond_dropout: float = 0.3
    # per sample, drop ALL CFG-eligible texts / ALL eligible images together (exclusive): the exact contexts of
    # the inference CFG branches (loom.data.packing); 0 = per-item dropout only (BAGEL)
    whole_text_cond_dropout: float = 0.0
    whole_image_cond_dropout: float = 0.0
    # share of noisy targets whose timestep logit is logit(u), u ~ U(0, 1), instead of BAGEL's N(0, 1) draw (the
    # train-time shift, loss.timestep_shift, applies to both): a high shift alone almost never trains t < 0.2, the
    # last denoising steps, which then leave per-pixel noise in small-image generations (evals/shapes/demo_scores.md)
    timestep_uniform: float = 0.0
    # overrides of loom.data.builders.BuildConfig (resolution rules, K_max, N_max, ablations); its own dropout
    # fields are unused by the trainer: the *_cond_dropout values above apply
    build: dict[str, Any] = field(default_factory=dict)
    max_bad_samples: int = 100  # stop when more corrupt samples than this were skipped (all ranks)

    def cond_dropout(self) -> CondDropout:
        return CondDropout(self.text_cond_dropout, self.vit_cond_dropout, self.vae_cond_dropout,
                           self.whole_text_cond_dropout, self.whole_image_cond_dropout)


class DataError(RuntimeError):
    pass


class PlanSource(Protocol):
    """A source of sequence plans: `plans(row, rng)` builds every training instance of one row."""

    def __len__(self) -> int: ...

    def plans(self, row: int, rng: random.Random) -> list[SequencePlan]: ...

    def source(self, row: int) -> str: ...


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts, identical across processes and Python hash seeds."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def plan_tokens(plan: SequencePlan, geometry: PackGeometry) -> int:
    """Packed length before CFG dropout (the builders' exact count, markers included)."""
    from .builders import plan_num_tokens

    return plan_num_tokens(plan, geometry)


# ---- sources -------------------------------------------------------------------------------------------------

class ListSource:
    """Fixed, prebuilt plans (tests, overfitting a fixed batch): row i → [plans[i]]."""

    def __init__(self, plans: list[SequencePlan], name: str = "list") -> None:
        self._plans, self.name = plans, name

    def __len__(self) -> int:
        return len(self._plans)

    def plans(self, row: int, rng: random.Random) -> list[SequencePlan]:
        p = self._plans[row]
        return [SequencePlan(list(p.items), p.source or self.source(row))]

    def source(self, row: int) -> str:
        return f"{self.name}:{row}"


class SyntheticSource:
    """Deterministic random plans shaped like a one-frame tutorial instance (prompt → plan with CE → reference
    as ViT + clean VAE → step text → noisy target). Needs no files and no builders: smoke runs and benchmarks."""

    def __init__(self, num_rows: int, image_size: int, geometry: PackGeometry, vocab: tuple[int, int],
                 name: str = "synthetic") -> None:
        self.num_rows, self.size, self.geometry, self.vocab, self.name = num_rows, image_size, geometry, vocab, name

    def __len__(self) -> int:
        return self.num_rows

    def source(self, row: int) -> str:
        return f"{self.name}:{row}"

    def plans(self, row: int, rng: random.Random) -> list[SequencePlan]:
        g = torch.Generator().manual_seed(stable_seed("synthetic", row))
        lo, hi = self.vocab
        ids = lambda n: torch.randint(lo, hi, (n,), generator=g).tolist()  # noqa: E731
        s = self.size
        vit = max(self.geometry.vit_patch, s // self.geometry.vit_patch * self.geometry.vit_patch)
        # smooth images (low-frequency pattern + small noise) so a tiny model can actually fit them
        base = torch.rand(3, 2, 2, generator=g) * 2 - 1
        ref = torch.nn.functional.interpolate(base[None], size=(s, s), mode="bilinear", align_corners=False)[0]
        tgt = (ref.flip(-1) * 0.8).clamp(-1, 1)
        ref_vit = torch.nn.functional.interpolate(ref[None], size=(vit, vit), mode="bilinear", align_corners=False)[0]
        items = [
            PlanItem("text", text_ids=ids(6), enable_cfg=True, name="prompt"),
            PlanItem("text", text_ids=ids(10), loss=True, name="plan"),
            PlanItem("vit_image", image=ref_vit, enable_cfg=True, frame=-1, name="ref vit"),
            PlanItem("vae_image", image=ref, enable_cfg=True, frame=-1, name="ref vae"),
            PlanItem("text", text_ids=ids(4), name="step"),
            PlanItem("vae_image", image=tgt, loss=True, frame=1, name="target"),
        ]
        return [SequencePlan(items, self.source(row))]


def build_sources(cfg: DataConfig, tokenizer, tokens: SpecialTokens, geometry: PackGeometry,
                  vocab_size: int, model_slots: tuple[int, int] | None = None) -> dict[str, PlanSource]:
    out: dict[str, PlanSource] = {}
    for name, sc in cfg.sources.items():
        if sc.format == "synthetic" or sc.path == "synthetic":
            lo = 10
            hi = min(vocab_size, min(tokens.bos, tokens.eos, tokens.start_of_image, tokens.end_of_image))
            out[name] = SyntheticSource(sc.num_rows, sc.image_size, geometry, (lo, max(lo + 1, hi)), name)
        else:
            from .manifest import ManifestSource

            out[name] = ManifestSource(sc.path, sc.format, sc.split, tokenizer, tokens, {**cfg.build, **sc.build},
                                       geometry, model_slots)
    if not out:
        raise DataError("data.sources is empty: add at least one source (see data/README.md)")
    return out


# ---- the stream ----------------------------------------------------------------------------------------------

@dataclass
class TrainBatch:
    packed: PackedBatch
    sample_seeds: list[int]  # one per sample, pack order: seeds the flow noise in the train step
    num_samples: int
    events: list[dict]  # skipped samples since the previous batch: {"kind", "source", "error"}
    worker: int = 0  # logical worker that produced it
    state: dict = field(default_factory=dict)  # that worker's stream position after this batch


class _ScriptedRandom(random.Random):
    """Feeds `pack_sequences` the per-sample CFG-dropout draws in the order it asks for them."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__(0)
        self._draws = list(draws)

    def random(self) -> float:
        if not self._draws:
            raise RuntimeError("packing asked for more CFG-dropout draws than the plans have eligible items")
        return self._draws.pop(0)


class PlanStream:
    """One shard's infinite stream of (plan, sample key), with an integer state."""

    def __init__(self, sources: dict[str, PlanSource], weights: dict[str, float], seed: int, shard: int,
                 num_shards: int, shuffle: bool = True, state: dict | None = None) -> None:
        self.sources, self.seed, self.shard, self.num_shards, self.shuffle = sources, seed, shard, num_shards, shuffle
        self.names = sorted(sources)
        total = sum(max(0.0, weights.get(n, 1.0)) for n in self.names)
        if total <= 0:
            raise DataError("all data source weights are zero")
        self.cum = []
        acc = 0.0
        for n in self.names:
            acc += max(0.0, weights.get(n, 1.0)) / total
            self.cum.append(acc)
        for n in self.names:
            if len(sources[n]) < num_shards:
                raise DataError(f"source {n!r} has {len(sources[n])} rows, fewer than the {num_shards} shards "
                                "(ranks × workers); every shard needs at least one row")
        self.state = copy.deepcopy(state) if state else {"records": 0, "cursor": {n: 0 for n in self.names},
                               "epoch": {n: 0 for n in self.names}, "current": None, "plan_idx": 0}
        self._perm: dict[tuple[str, int], list[int]] = {}
        self._current_plans: list[SequencePlan] | None = None
        self.events: list[dict] = []
        self.num_bad = 0

    def _rows(self, name: str, epoch: int) -> list[int]:
        key = (name, epoch)
        if key not in self._perm:
            rows = list(range(len(self.sources[name])))
            if self.shuffle:
                random.Random(stable_seed(self.seed, name, "perm", epoch)).shuffle(rows)
            self._perm = {k: v for k, v in self._perm.items() if k[0] != name}  # keep one epoch per source
            self._perm[key] = rows[self.shard::self.num_shards]
        return self._perm[key]

    def _pick_source(self, n: int) -> str:
        u = random.Random(stable_seed(self.seed, "mix", self.shard, n)).random()
        for name, c in zip(self.names, self.cum):
            if u < c:
                return name
        return self.names[-1]

    def _build(self, name: str, row: int, epoch: int) -> list[SequencePlan]:
        rng = random.Random(stable_seed(self.seed, name, epoch, row))
        return self.sources[name].plans(row, rng)

    def next(self) -> tuple[SequencePlan, int]:
        st = self.state
        for _ in range(100000):
            if st["current"] is not None:
                name, row, epoch = st["current"]
                if self._current_plans is None:  # rebuilt after a resume: identical by construction
                    self._current_plans = self._build(name, row, epoch)
                if st["plan_idx"] < len(self._current_plans):
                    i = st["plan_idx"]
                    st["plan_idx"] += 1
                    return self._current_plans[i], stable_seed(self.seed, name, epoch, row, i)
                st["current"], self._current_plans = None, None
            name = self._pick_source(st["records"])
            st["records"] += 1
            rows = self._rows(name, st["epoch"][name])
            row = rows[st["cursor"][name]]
            epoch = st["epoch"][name]
            st["cursor"][name] += 1
            if st["cursor"][name] >= len(rows):
                st["cursor"][name], st["epoch"][name] = 0, st["epoch"][name] + 1
            try:
                plans = self._build(name, row, epoch)
            except Exception as e:  # a corrupt sample: skipped, logged with its source, counted
                self.num_bad += 1
                self.events.append({"kind": "corrupt", "source": self.sources[name].source(row),
                                    "error": f"{type(e).__name__}: {e}"})
                continue
            st["current"], st["plan_idx"], self._current_plans = [name, row, epoch], 0, plans
        raise DataError("100000 consecutive records produced no plan: every sample is failing")

    def snapshot(self) -> dict:
        return {**self.state, "cursor": dict(self.state["cursor"]), "epoch": dict(self.state["epoch"]),
                "current": list(self.state["current"]) if self.state["current"] else None}


class PackedStream:
    """Greedy packing of a `PlanStream` into `PackedBatch`es under `batch_size` and the token budget."""

    def __init__(self, sources: dict[str, PlanSource], cfg: DataConfig, tokens: SpecialTokens,
                 geometry: PackGeometry, shard: int, num_shards: int, state: dict | None = None,
                 ensure_vit: bool = False) -> None:
        self.cfg, self.tokens, self.geometry, self.ensure_vit = cfg, tokens, geometry, ensure_vit
        weights = {n: s.weight for n, s in cfg.sources.items()}
        self.plans = PlanStream(sources, weights, cfg.seed, shard, num_shards, cfg.shuffle,
                                state["stream"] if state else None)
        self.num_bad = state["num_bad"] if state else 0
        self.num_too_long = state["num_too_long"] if state else 0
        self.dropout = cfg.cond_dropout()
        self._pending: tuple[SequencePlan, int, int] | None = None
        self._pending_state: dict | None = None

    def state_dict(self) -> dict:
        stream = self._pending_state if self._pending is not None else self.plans.snapshot()
        return {"stream": stream, "num_bad": self.num_bad, "num_too_long": self.num_too_long}

    def _pull(self) -> tuple[SequencePlan, int, int]:
        if self._pending is not None:
            out, self._pending, self._pending_state = self._pending, None, None
            return out
        while True:
            before = self.plans.snapshot()
            plan, key = self.plans.next()
            n = plan_tokens(plan, self.geometry)
            if n > self.cfg.max_tokens_per_sample or n > self.cfg.max_tokens:
                self.num_too_long += 1
                self.plans.events.append({"kind": "too_long", "source": plan.source,
                                          "error": f"{n} tokens > budget ({self.cfg.max_tokens_per_sample} per "
                                                   f"sample, {self.cfg.max_tokens} per pack)"})
                continue
            self._last_before = before
            return plan, key, n

    def next(self) -> TrainBatch:
        plans, keys, total = [], [], 0
        while len(plans) < self.cfg.batch_size:
            plan, key, n = self._pull()
            if plans and total + n > self.cfg.max_tokens:
                self._pending, self._pending_state = (plan, key, n), self._last_before
                break
            plans.append(plan)
            keys.append(key)
            total += n
        self.num_bad = self.num_bad + self.plans.num_bad
        self.plans.num_bad = 0
        if self.num_bad > self.cfg.max_bad_samples:
            raise DataError(f"{self.num_bad} corrupt samples skipped (> data.max_bad_samples="
                            f"{self.cfg.max_bad_samples}); last: {self.plans.events[-1:]}")
        packed = pack_plans(plans, keys, self.tokens, self.geometry, self.dropout, self.ensure_vit,
                            self.cfg.timestep_uniform)
        events, self.plans.events = self.plans.events, []
        return TrainBatch(packed, keys, len(plans), events)


def pack_plans(plans: list[SequencePlan], keys: list[int], tokens: SpecialTokens, geometry: PackGeometry,
               dropout: CondDropout, ensure_vit: bool = False, timestep_uniform: float = 0.0) -> PackedBatch:
    """`pack_sequences` with every random choice taken from each sample's own key (see module docstring).

    `ensure_vit`: if no ViT image survives, append a one-patch ViT-only pseudo-sample (its own document, no
    loss). Under FSDP every rank must run the ViT layers (each is a wrap unit with collectives), which BAGEL
    guarantees with `is_mandatory` datasets; this keeps ranks in lock-step whatever the mix and CFG dropout."""
    draws, fixed = [], []
    probs = {"text": dropout.text, "vit_image": dropout.vit, "vae_image": dropout.vae}
    for plan, key in zip(plans, keys):
        rng = random.Random(key)
        gen = torch.Generator().manual_seed(key)
        if dropout.whole:  # its own stream: switching whole-condition dropout on leaves the per-item draws as they were
            draws.append(random.Random(stable_seed(key, "whole-condition")).random())
        mix = random.Random(stable_seed(key, "timestep-mix")) if timestep_uniform > 0 else None  # own stream
        items = []
        for it in plan.items:
            if it.enable_cfg and probs[it.type] > 0:
                draws.append(rng.random())
            if it.type == "vae_image" and it.loss and it.timestep_logit is None:
                logit = float(torch.randn(1, generator=gen))
                if mix is not None and mix.random() < timestep_uniform:
                    u = min(max(mix.random(), 1e-6), 1 - 1e-6)
                    logit = math.log(u / (1 - u))
                it = replace(it, timestep_logit=logit)
            items.append(it)
        fixed.append(SequencePlan(items, plan.source))
    packed = pack_sequences(fixed, tokens, geometry, dropout, _ScriptedRandom(draws))
    if ensure_vit and packed.vit_token_seqlens.numel() == 0:
        p = geometry.vit_patch
        dummy = SequencePlan([PlanItem("vit_image", image=torch.zeros(3, p, p), name="fsdp-dummy")], "fsdp-dummy")
        packed = pack_sequences([*fixed, dummy], tokens, geometry, dropout, _ScriptedRandom(draws))
    return packed


def flow_noise(batch: PackedBatch, sample_seeds: list[int], dim: int) -> torch.Tensor:
    """[N_vae, Dl] ε for the pack, drawn per sample from its key (clean rows get values too; they are unused)."""
    if batch.num_vae_tokens == 0:
        return torch.zeros(0, dim)
    ends = torch.tensor(batch.sample_lens).cumsum(0)
    owner = torch.searchsorted(ends, batch.packed_vae_token_indexes, right=True)
    noise = torch.empty(batch.num_vae_tokens, dim)
    for s, seed in enumerate(sample_seeds):
        rows = (owner == s).nonzero().squeeze(1)
        if rows.numel():
            g = torch.Generator().manual_seed(stable_seed(seed, "noise"))
            noise[rows] = torch.randn(rows.numel(), dim, generator=g)
    return noise


# ---- rank × worker loader ------------------------------------------------------------------------------------

class _WorkerDataset(IterableDataset):
    def __init__(self, make_stream, states: list[dict | None], offset: int) -> None:
        self.make_stream, self.states, self.offset = make_stream, states, offset

    def __iter__(self) -> Iterator[TrainBatch]:
        info = get_worker_info()
        n = len(self.states)
        logical = ((info.id if info else 0) + self.offset) % n
        stream = self.make_stream(logical, self.states[logical])
        while True:
            b = stream.next()
            b.worker, b.state = logical, stream.state_dict()
            yield b


def _identity(x):
    return x


class ResumableLoader:
    """Infinite iterator of `TrainBatch` for one rank; `state_dict()` / `load_state_dict()` give exact resume."""

    def __init__(self, sources: dict[str, PlanSource], cfg: DataConfig, tokens: SpecialTokens,
                 geometry: PackGeometry, rank: int = 0, world_size: int = 1, ensure_vit: bool = False) -> None:
        self.sources, self.cfg, self.tokens, self.geometry = sources, cfg, tokens, geometry
        self.ensure_vit = ensure_vit
        self.rank, self.world_size = rank, world_size
        self.num_workers = max(1, cfg.num_workers)
        self.states: list[dict | None] = [None] * self.num_workers
        self.next_worker = 0
        self._it: Iterator[TrainBatch] | None = None
        self.num_bad = 0
        self.num_too_long = 0

    def _make_stream(self, logical: int, state: dict | None) -> PackedStream:
        shard = self.rank * self.num_workers + logical
        return PackedStream(self.sources, self.cfg, self.tokens, self.geometry, shard,
                            self.world_size * self.num_workers, state, self.ensure_vit)

    def state_dict(self) -> dict:
        return copy.deepcopy({"workers": self.states, "next_worker": self.next_worker,
                              "num_workers": self.num_workers, "rank": self.rank, "world_size": self.world_size})

    def load_state_dict(self, state: dict) -> None:
        if state["num_workers"] != self.num_workers or state["world_size"] != self.world_size:
            raise DataError(f"data state was saved with {state['world_size']} ranks × {state['num_workers']} "
                            f"workers, now {self.world_size} × {self.num_workers}: the shards differ. Keep the "
                            "layout, or set checkpoint.reset_data=true to restart the data stream")
        state = copy.deepcopy(state)
        self.states, self.next_worker = list(state["workers"]), state["next_worker"]
        self._it = None

    def _start(self) -> Iterator[TrainBatch]:
        ds = _WorkerDataset(self._make_stream, list(self.states), self.next_worker)
        if self.cfg.num_workers == 0:
            return iter(ds)
        return iter(DataLoader(ds, batch_size=None, num_workers=self.cfg.num_workers, collate_fn=_identity,
                               prefetch_factor=self.cfg.prefetch_factor, persistent_workers=False))

    def __iter__(self) -> ResumableLoader:
        return self

    def __next__(self) -> TrainBatch:
        if self._it is None:
            self._it = self._start()
        b = next(self._it)
        self.states[b.worker] = b.state
        self.next_worker = (b.worker + 1) % self.num_workers
        self.num_bad = sum(s["num_bad"] for s in self.states if s)
        self.num_too_long = sum(s["num_too_long"] for s in self.states if s)
        for e in b.events:
            log.warning("skipped %s sample %s: %s", e["kind"], e["source"], e["error"])
        return b

