"""What trains and how it steps: LoRA keeps Loom's temporal table and entity rows training (and says so), the
LoRA merge is peft's, the LR schedule against transformers' (equal without warm-up), and
`optim.global_batch_size` is the exact number of samples per step even when the token budget binds."""


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


def _lrs(make, total: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sch = make(opt)
    out = []
    for _ in range(total):
        out.append(sch.get_last_lr()[0])
        opt.step()
        sch.step()
    return out


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_schedule_vs_transformers_get_scheduler(schedule):
    """Why the schedule stays hand-written (loom.train.optim.lr_lambda): transformers' get_scheduler (BAGEL's)
    gives the same LRs without a warm-up (every paper recipe), but warms up as s / W instead of (s + 1) / W."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup", "cosine": "cosine_with_min_lr"}[schedule]
    for warmup in (0, 4):
        cfg = OptimConfig(lr=1e-3, schedule=schedule, min_lr=1e-5, warmup_steps=warmup)
        ours = _lrs(lambda o, c=cfg: build_scheduler(o, c, 50), 50)
        extra = {"min_lr": 1e-5} if schedule == "cosine" else None
        theirs = _lrs(lambda o, w=warmup, e=extra: get_scheduler(name, o, num_warmup_steps=w, num_training_steps=50,
                                                                 scheduler_specific_kwargs=e), 50)
        if warmup == 0:
            assert ours == pytest.approx(theirs, rel=1e-15, abs=0)
        else:
            assert ours[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3]) and theirs[0] == 0.0
            assert ours[:4] == pytest.approx(theirs[1:5])  # one step apart during the warm-up
        assert ours[0] > 0 and (schedule == "constant" or ours[-1] < 0.02 * cfg.lr)


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
