from pathlib import Path

import pytest
import yaml

from loom.config import ConfigError, load, merge_into
from loom.model.configs import preset
from loom.train.config import TrainConfig, load_train_config

from .conftest import make_cfg, tiny_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


def test_defaults_yaml_and_overrides_precedence(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("run: {dir: /r, total_steps: 7}\noptim: {lr: 0.5, grad_accum: 3}\n")
    cfg = load_train_config(y, ["optim.lr=0.25"])
    assert cfg.optim.lr == 0.25  # CLI beats YAML
    assert cfg.optim.grad_accum == 3  # YAML beats default
    assert cfg.loss.ce_weight == 0.25 and cfg.loss.mse_weight == 1.0  # Loom defaults
    assert cfg.run.total_steps == 7


@pytest.mark.parametrize("bad", ["optim.lrr=1", "data.sources.syn.wieght=2", "optim.lr=abc", "nokey"])
def test_typos_and_bad_values_are_errors(tmp_path, bad):
    with pytest.raises(ConfigError):
        load_train_config(None, tiny_overrides(tmp_path, bad))


def test_missing_required_is_error():
    with pytest.raises(ConfigError, match="run.dir"):
        load(TrainConfig, None, ["run.total_steps=3"])


def test_model_overrides_merge_strictly():
    cfg = merge_into(preset("loom-tiny"), {"max_frames": 3, "llm": {"num_hidden_layers": 1}})
    assert cfg.max_frames == 3 and cfg.llm.num_hidden_layers == 1 and cfg.llm.hidden_size == 64
    with pytest.raises(ConfigError):
        merge_into(preset("loom-tiny"), {"max_framez": 3})


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_resolve(name):
    cfg = load_train_config(CONFIGS / name, ["run.dir=/tmp/x"])
    if name == "shapes_demo.yaml":  # the CPU demo trains from scratch (its own recipe, evals/shapes/demo_scores.md)
        assert cfg.model.init == "scratch" and cfg.model.preset == "loom-shapes"
        assert (cfg.loss.ce_weight, cfg.loss.mse_weight) == (0.25, 1.0)
        assert not cfg.parallel.activation_checkpointing
    elif name != "tiny_cpu.yaml":
        # the paper's recipe (§4.1): AdamW, lr 2.5e-5 constant, CE:MSE 0.25:1, batch 4
        assert cfg.optim.lr == 2.5e-5 and cfg.optim.schedule == "constant" and cfg.optim.warmup_steps == 0
        assert (cfg.loss.ce_weight, cfg.loss.mse_weight) == (0.25, 1.0)
        assert cfg.optim.global_batch_size == 4
        assert cfg.model.init.startswith("bagel:")
        assert cfg.data.build["vae_transform"] == [1024, 512, 16]  # BAGEL's generation resolution
    steps = {"compose.yaml": 16000, "style.yaml": 10000, "recipe_tutorial.yaml": 20000,
             "painting_tutorial.yaml": 5000}
    if name in steps:
        assert cfg.run.total_steps == steps[name]


def test_resolved_config_written_to_run_dir(tmp_path):
    from loom.train.trainer import Trainer

    cfg = make_cfg(tmp_path / "run", "run.total_steps=1", "checkpoint.export_at_end=false")
    Trainer(cfg).run()
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["optim"]["lr"] == 1e-3 and written["run"]["total_steps"] == 1
    ck = yaml.safe_load((tmp_path / "run" / "checkpoints" / "step-0000001" / "config.yaml").read_text())
    assert ck == written
    again = load_train_config(tmp_path / "run" / "config.yaml")  # a dumped config loads back identically
    assert again == cfg


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    acc = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
    got = {p.name: load_config_from_file(str(p)) for p in acc.glob("*.yaml")}
    assert {k: (c.num_processes, c.num_machines) for k, c in got.items()} == {
        "single_gpu.yaml": (1, 1), "fsdp_1node_4gpu.yaml": (4, 1), "fsdp_1node_8gpu.yaml": (8, 1),
        "multinode.yaml": (16, 2)}
    assert all(c.mixed_precision == "no" for c in got.values())  # bf16 is loom's (parallel.mixed_precision)
