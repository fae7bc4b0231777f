"""Resumable, sharded, weighted, budgeted data stream (loom.data.loader)."""

from pathlib import Path

import pytest
import torch

from loom.data.loader import DataConfig, ListSource, ResumableLoader, SourceConfig, flow_noise, pack_plans
from loom.data.packing import CondDropout, PackGeometry
from loom.data.tokenizer import SpecialTokens, load_tokenizer
from loom.data.types import PlanItem, SequencePlan

GEO = PackGeometry(vit_patch=14, vit_grid=70, latent_stride=4, latent_grid=16)
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bagel-tiny"


@pytest.fixture(scope="module")
def tiny_tokens():
    return SpecialTokens.from_tokenizer(load_tokenizer(FIXTURE))


def tiny_plan(seed: int, text_len: int = 8, size: int = 16) -> SequencePlan:
    """prompt (cfg) → answer (CE) → ViT + clean VAE image (cfg) → noisy VAE target (same as tests/train)."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(10, 400, (n,), generator=g).tolist()  # noqa: E731
    img = torch.rand(3, size, size, generator=g) * 2 - 1
    return SequencePlan([
        PlanItem("text", text_ids=ids(4), enable_cfg=True),
        PlanItem("text", text_ids=ids(text_len), loss=True),
        PlanItem("vit_image", image=torch.rand(3, 28, 28, generator=g) * 2 - 1, enable_cfg=True, frame=-1),
        PlanItem("vae_image", image=img, enable_cfg=True, frame=-1),
        PlanItem("vae_image", image=img.flip(-1), loss=True, frame=1),
    ], f"tiny:{seed}")


def _cfg(**kw) -> DataConfig:
    base = dict(sources={"a": SourceConfig(path="-")}, batch_size=2, max_tokens=400, max_tokens_per_sample=400,
                seed=3, text_cond_dropout=0.3, vit_cond_dropout=0.3, vae_cond_dropout=0.3)
    base.update(kw)
    return DataConfig(**base)


def _fingerprint(b):
    p = b.packed
    return (tuple(p.sample_sources), p.packed_text_ids.tolist(), p.packed_timestep_logits.tolist(),
            tuple(p.sample_lens), tuple(b.sample_seeds))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly(tiny_tokens, workers):
    srcs = {"a": ListSource([tiny_plan(i, text_len=3 + i % 5) for i in range(11)], "a")}
    cfg = _cfg(num_workers=workers)
    ld = ResumableLoader(srcs, cfg, tiny_tokens, GEO)
    for _ in range(4):
        next(ld)
    state = ld.state_dict()
    expect = [_fingerprint(next(ld)) for _ in range(7)]
    ld2 = ResumableLoader(srcs, cfg, tiny_tokens, GEO)
    ld2.load_state_dict(state)
    got = [_fingerprint(next(ld2)) for _ in range(7)]
    assert got == expect
    assert len({s for fp in expect for s in fp[0]}) > 5  # it really walked through (and past) the source


def test_ranks_and_workers_get_disjoint_shards(tiny_tokens):
    srcs = {"a": ListSource([tiny_plan(i) for i in range(12)], "a")}
    seen = []
    for rank in range(2):
        ld = ResumableLoader(srcs, _cfg(batch_size=1, num_workers=0), tiny_tokens, GEO, rank=rank, world_size=2)
        seen.append({next(ld).packed.sample_sources[0] for _ in range(6)})
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == 12


def test_task_mixing_follows_weights(tiny_tokens):
    plans = [SequencePlan(tiny_plan(i, text_len=2).items) for i in range(4)]  # unnamed: named by the source
    srcs = {"a": ListSource(plans, "a"), "b": ListSource(plans, "b")}
    cfg = _cfg(sources={"a": SourceConfig(path="-", weight=3.0), "b": SourceConfig(path="-", weight=1.0)},
               batch_size=4, max_tokens=4000)
    ld = ResumableLoader(srcs, cfg, tiny_tokens, GEO)
    names = [s.split(":")[0] for _ in range(100) for s in next(ld).packed.sample_sources]
    assert len(names) == 400
    assert abs(names.count("a") / 400 - 0.75) < 0.06


def test_token_budget_and_too_long_samples(tiny_tokens):
    small = [tiny_plan(i, text_len=2) for i in range(3)]  # (4+2) + (2+2) + (4+2) + 2×(16+2) = 52 tokens
    big = tiny_plan(9, text_len=500)
    srcs = {"a": ListSource([small[0], big, small[1], small[2]], "a")}
    ld = ResumableLoader(srcs, _cfg(batch_size=8, max_tokens=120, max_tokens_per_sample=200, shuffle=False),
                         tiny_tokens, GEO)
    b = next(ld)
    assert b.packed.sample_sources == ["tiny:0", "tiny:1"]  # 2 × 52 ≤ 120 < 3 × 52; the 550-token one skipped
    assert b.packed.sequence_length <= 120
    assert b.events == [{"kind": "too_long", "source": "tiny:9",
                         "error": "550 tokens > budget (200 per sample, 120 per pack)"}]
    assert ld.num_too_long == 1
    assert next(ld).packed.sample_sources[0] == "tiny:2"  # the sample that did not fit opens the next pack


def test_sample_randomness_is_independent_of_pack(tiny_tokens):
    """A sample gets the same CFG drops, timestep and noise alone or packed with others (rank-independence)."""
    p0, p1 = tiny_plan(0), tiny_plan(1)
    drop = CondDropout(0.5, 0.5, 0.5)
    alone = pack_plans([p1], [77], tiny_tokens, GEO, drop)
    both = pack_plans([p0, p1], [5, 77], tiny_tokens, GEO, drop)
    n0 = both.sample_lens[0]
    assert both.sample_lens[1] == alone.sample_lens[0]
    sel = both.packed_vae_token_indexes >= n0
    assert torch.equal(both.packed_timestep_logits[sel], alone.packed_timestep_logits)
    na, nb = flow_noise(alone, [77], 48), flow_noise(both, [5, 77], 48)
    assert torch.equal(nb[sel], na)
    assert not torch.equal(nb[~sel][: na.shape[0]], na)


def test_ensure_vit_adds_isolated_dummy(tiny_tokens):
    p = tiny_plan(0)
    p.items = [it for it in p.items if it.type != "vit_image"]
    b = pack_plans([p], [1], tiny_tokens, GEO, CondDropout(), ensure_vit=True)
    assert b.vit_token_seqlens.tolist() == [1] and b.sample_sources == ["tiny:0", "fsdp-dummy"]
    assert b.sample_lens[1] == 3 and b.ce_loss_indexes.max() < b.sample_lens[0]
