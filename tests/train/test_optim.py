"""What trains and how it steps: LoRA keeps Loom's temporal table and entity rows training (and says so), the
LoRA merge is peft's, the LR schedules are transformers' (BAGEL's), and `optim.global_batch_size` is the exact
number of samples per step even when the token budget binds."""

import math

import pytest
import torch
from safetensors.torch import load_file

from loom.data.loader import ListSource
from loom.model.configs import preset
from loom.model.loom import Loom
from loom.train.optim import LoraConfig, OptimConfig, apply_lora, build_scheduler, merge_lora_state_dict
from loom.train.trainer import Trainer

from .conftest import make_cfg, read_metrics, tiny_plan

LORA = ("optim.lora.enabled=true", "optim.lora.r=4", "optim.lora.alpha=8")


def test_lora_trains_temporal_table_and_entity_rows_and_logs_groups(tmp_path):
    tr = Trainer(make_cfg(tmp_path / "r", "run.total_steps=2", *LORA, "checkpoint.export_weights=raw",
                          "optim.lr=1e-2"))
    table = tr.model.temporal_embed.weight
    assert table.requires_grad
    before = table.detach().clone()
    tr.run()
    assert not torch.equal(table.detach(), before)  # tiny_plan has frames −1 and 1: their rows moved
    exp = load_file(str(tmp_path / "r" / "exports" / "step-0000002" / "ema.safetensors"))
    assert torch.equal(exp["temporal_embed.weight"], table.detach())  # … and the export carries them
    log = (tmp_path / "r" / "logs" / "train-rank00000.log").read_text()
    lines = [ln for ln in log.splitlines() if " trains " in ln]
    groups = {ln.split("trains ", 1)[1].rsplit(" ", 2)[0].strip(): int(ln.split()[-2]) for ln in lines}
    n_lora = sum(p.numel() for n, p in tr.model.named_parameters() if "lora_" in n)
    d = tr.model_cfg.llm.hidden_size
    assert groups == {"LoRA adapters": n_lora, "entity rows (row-masked embed_tokens / lm_head)": 2 * 9 * d,
                      "temporal_embed": table.numel()}


def test_lora_merge_is_peft_merge_and_unload(tmp_path):
    """The export's merge is peft's own (`merge_and_unload`), equal to W + (alpha/r)·B·A, and leaves the
    state dict it was given untouched (it may hold the live weights)."""
    cfg = LoraConfig(enabled=True, r=4, alpha=8)
    torch.manual_seed(0)
    model = apply_lora(Loom(preset("loom-tiny")), cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merge_lora_state_dict(sd, cfg, preset("loom-tiny"))
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())  # input unchanged
    assert merged.keys() == Loom(preset("loom-tiny")).state_dict().keys()
    pre = "language_model.model.layers.1.self_attn.v_proj_moe_gen"
    a, b = sd[f"{pre}.lora_A.default.weight"], sd[f"{pre}.lora_B.default.weight"]
    assert torch.equal(merged[f"{pre}.weight"], sd[f"{pre}.base_layer.weight"] + (b @ a) * 2.0)
    assert not torch.equal(merged[f"{pre}.weight"], sd[f"{pre}.base_layer.weight"])
    ref = {k: v for k, v in sd.items() if "lora_" not in k and "base_layer" not in k}
    assert all(torch.equal(merged[k], v) for k, v in ref.items())


def _old_multiplier(cfg: OptimConfig, total: int, s: int) -> float:
    """The hand-written schedule this replaced: warm-up (s + 1) / W, cosine with a floor."""
    if cfg.warmup_steps > 0 and s < cfg.warmup_steps:
        return (s + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    prog = min(1.0, (s - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog))


def _lrs(cfg: OptimConfig, total: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sch = build_scheduler(opt, cfg, total)
    out = []
    for _ in range(total):
        out.append(sch.get_last_lr()[0])
        opt.step()
        sch.step()
    return out


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_schedules_are_transformers_and_equal_the_old_ones_without_warmup(schedule):
    cfg = OptimConfig(lr=1e-3, schedule=schedule, min_lr=1e-5, warmup_steps=0)
    old = [cfg.lr * _old_multiplier(cfg, 50, s) for s in range(50)]
    new = _lrs(cfg, 50)
    assert new == pytest.approx(old, rel=1e-15, abs=0)  # the paper recipes: warm-up 0
    assert new[0] == cfg.lr and (schedule == "constant" or new[-1] < 0.02 * cfg.lr)
    # with a warm-up the first step runs at lr 0, as BAGEL's transformers schedules do (the old one: lr / W)
    warm = _lrs(OptimConfig(lr=1e-3, schedule=schedule, min_lr=1e-5, warmup_steps=4), 50)
    assert warm[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3], abs=1e-12)
    with pytest.raises(ValueError, match="unknown optim.schedule 'cosin'"):
        _lrs(OptimConfig(schedule="cosin"), 2)


def test_global_batch_size_is_the_sample_count_when_the_budget_binds(tmp_path):
    """4 samples of 58 tokens, a 180-token pack: 3 fit. global_batch_size=4 trains 4 per step (2 packs)."""
    plans = [tiny_plan(i) for i in range(8)]
    cfg = make_cfg(tmp_path / "r", "run.total_steps=3", "data.batch_size=4", "data.max_tokens=180",
                   "data.max_tokens_per_sample=180", "optim.global_batch_size=4", "checkpoint.export_at_end=false")
    Trainer(cfg, {"p": ListSource(plans)}).run()
    m = read_metrics(tmp_path / "r")
    assert [r["samples"] for r in m] == [4, 8, 12]
    assert [r["step_samples"] for r in m] == [4, 4, 4] and [r["micro_batches"] for r in m] == [2, 2, 2]
    assert all(r["mse_tokens"] == 4 * 16 for r in m)
