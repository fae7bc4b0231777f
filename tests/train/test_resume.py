"""Bit-exact training at 2 threads: identical runs are identical, and a resume after ANY step of ANY recipe's data
continues exactly (model, EMA and optimizer state), including checkpoints that predate the eager optimizer state."""

import pytest
import torch

from loom.model.loom import TemporalEmbedding
from loom.train.trainer import Trainer

from .conftest import example_manifest, make_cfg, manifest_sources, read_metrics

# one manifest per recipe's data (data/examples rows); the paper recipes train compose / style / tutorial alone
RECIPES = {
    "tutorial": ["tut-0", "tut-1", "tut-0", "tut-1"],
    "compose": ["cmp-0"] * 4,
    "decompose": ["dec-0"] * 4,
    "style": ["sty-0"] * 4,
    "t2i": ["t2i-0"] * 4,
    "edit": ["edit-0"] * 4,
    "understand": ["und-0"] * 4,
}
# CFG dropout on, so packs differ step to step (whole conditions dropped, timesteps drawn per sample)
COMMON = ("data.batch_size=2", "data.text_cond_dropout=0.3", "data.vit_cond_dropout=0.3",
          "data.vae_cond_dropout=0.3", "optim.weight_decay=0.01", "checkpoint.export_at_end=false",
          "ema.decay=0.5")


def _state(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in tr.ema.shadow.items()})
    names = {id(p): n for n, p in tr.model.named_parameters()}
    for p, st in tr.optimizer.state.items():
        for k, v in st.items():
            out[f"optim.{names[id(p)]}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def test_temporal_table_backward_is_deterministic_at_two_threads(two_threads):
    """The table's gradient sums many tokens into few rows; with `weight[rows]` the CPU backward adds them with
    parallel atomics (24 of 30 repeats differed here); `F.embedding` sums each row in order."""
    table = TemporalEmbedding(8, 4, 64)
    torch.nn.init.normal_(table.weight)
    ids = torch.randint(-4, 9, (6000,), generator=torch.Generator().manual_seed(0))
    g = torch.randn(6000, 64, generator=torch.Generator().manual_seed(1))

    def grad():
        table.weight.grad = None
        (table(ids) * g).sum().backward()
        return table.weight.grad.clone()

    ref = grad()
    assert not any(not torch.equal(ref, grad()) for _ in range(30))


def test_identical_runs_are_identical_at_two_threads(tmp_path, two_threads):
    """All task families mixed, 4 steps, twice: every weight and every logged number bit-identical."""
    m = example_manifest(tmp_path / "data", ["tut-0", "cmp-0", "dec-0", "sty-0", "t2i-0", "edit-0", "und-0",
                                             "tut-1"])
    runs = []
    for name in ("a", "b"):
        tr = Trainer(make_cfg(tmp_path / name, "run.total_steps=4", *COMMON, sources=manifest_sources(m)))
        tr.run()
        runs.append((_state(tr), [(r["loss"], r["grad_norm"]) for r in read_metrics(tmp_path / name)]))
    assert runs[0][1] == runs[1][1]
    assert max_abs_diff(runs[0][0], runs[1][0]) == 0.0


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_resume_after_one_step_is_exact_for_every_recipe(tmp_path, two_threads, recipe):
    """1 step → checkpoint → resume → 1 more step equals 2 steps straight, to the bit, for each recipe's data
    (compose / decompose / style / t2i never give lm_head a gradient, understanding never the generation path;
    before the eager optimizer state such a checkpoint did not even load)."""
    m = example_manifest(tmp_path / "data", RECIPES[recipe])
    src = manifest_sources(m)
    straight = Trainer(make_cfg(tmp_path / "straight", "run.total_steps=2", *COMMON, sources=src))
    straight.run()
    Trainer(make_cfg(tmp_path / "resumed", "run.total_steps=1", *COMMON, sources=src)).run()
    resumed = Trainer(make_cfg(tmp_path / "resumed", "run.total_steps=2", *COMMON, sources=src))
    assert resumed.step == 1
    resumed.run()
    diff = max_abs_diff(_state(straight), _state(resumed))
    print(f"\n[figure] recipe={recipe} max|dw| after resume at step 1 (model, EMA, optimizer state): {diff}")
    assert diff == 0.0
    keys = ("step", "loss", "ce", "mse", "grad_norm", "lr")
    la = [[r[k] for k in keys] for r in read_metrics(tmp_path / "straight")]
    assert la == [[r[k] for k in keys] for r in read_metrics(tmp_path / "resumed")] and len(la) == 2


def test_checkpoint_without_state_for_unused_params_still_resumes(tmp_path, two_threads):
    """A checkpoint written before the optimizer state was created eagerly lacks the Adam state of parameters that
    never had a gradient: it loads, and those parameters start from the fresh state they had."""
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    m = example_manifest(tmp_path / "data", RECIPES["compose"])
    run = tmp_path / "r"
    tr = Trainer(make_cfg(run, "run.total_steps=1", *COMMON, sources=manifest_sources(m)))
    tr.run()
    ck = run / "checkpoints" / "step-0000001" / "state"
    dcp_to_torch_save(ck, tmp_path / "whole.pt")
    st = torch.load(tmp_path / "whole.pt", weights_only=False)  # our own file, just written
    head = "language_model.lm_head.weight"
    assert head in st["optim"]["state"]
    del st["optim"]["state"][head]  # what an old checkpoint of a compose run looked like
    shutil.rmtree(ck)
    dcp.save(st, checkpoint_id=str(ck))
    tr2 = Trainer(make_cfg(run, "run.total_steps=2", *COMMON, sources=manifest_sources(m)))
    assert tr2.step == 1
    p = dict(tr2.model.named_parameters())[head]
    assert float(tr2.optimizer.state[p]["step"]) == 0.0 and not tr2.optimizer.state[p]["exp_avg"].any()
    tr2.run()
