"""`TrainConfig`: the root of a training run, composed of each component's own config (house rule 3).

Load with `load_train_config(yaml, ["optim.lr=1e-5", ...])`; unknown keys and wrong types are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import MISSING, load
from ..data.loader import DataConfig
from .checkpoint import CheckpointConfig
from .ema import EMAConfig
from .losses import LossConfig
from .metrics import LogConfig
from .optim import OptimConfig
from .parallel import ParallelConfig


@dataclass
class RunConfig:
    dir: str = MISSING  # run directory (outside the checkout, e.g. $LOOM_RUNS/<name>)
    name: str = ""  # defaults to the folder name; wandb run id
    seed: int = 4396  # BAGEL global_seed; model init and any torch randomness
    total_steps: int = MISSING  # optimizer steps (Loom: 16k compose, 10k style, 20k recipe, 5k painting)
    # opt-in wall-clock cap (0: none). The budget is total_steps; a run this cap stops saves a checkpoint, ends
    # with status "time_limit", exports nothing, and resumes to total_steps when rerun with a larger cap
    max_minutes: float = 0.0


@dataclass
class ModelInitConfig:
    init: str = "scratch"  # scratch | bagel:<dir> | export:<dir>
    preset: str = "loom-tiny"  # scratch only: architecture preset (loom.model.configs.preset)
    tokenizer: str = ""  # scratch only: tokenizer folder
    overrides: dict[str, Any] = field(default_factory=dict)  # strict merge onto the preset / loaded config
    dtype: str = "fp32"  # master weight dtype (fp32: BAGEL trains fp32 masters with bf16 compute)


@dataclass
class SampleConfig:
    every: int = 0  # generate samples into <run.dir>/samples/step-N every N steps (0: never)
    fn: str = "loom.infer.train_hook:generate_samples"  # import path; skipped with a warning if absent
    prompts: list[str] = field(default_factory=list)  # "t2i: …" / "tutorial: …" picks the task per prompt
    use_ema: bool = True
    seed: int = 0
    task: str = "tutorial"  # default task of a prompt: tutorial (model-written plan; t2i if unparsable) | t2i
    num_timesteps: int = 10  # denoising steps per image (few: samples are a progress check, not results)
    resolution: int = 0  # square output side in pixels (0: min(512, the model's largest))
    max_plan_tokens: int = 400  # tutorial planning budget


@dataclass
class EvalConfig:
    """Periodic held-out scoring during training (e.g. the shapes demo's judge, `loom.world.demo:score_heldout`)."""

    every: int = 0  # score every N optimizer steps (0: never); results go to metrics.jsonl as {"kind": "eval"}
    fn: str = ""  # import path "module:function"; called as fn(model=, vae=, tokenizer=, build=, step=, out_dir=,
    #               **args) under no_grad and returns {name: number}
    args: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of fn
    use_ema: bool = True  # score the EMA weights (what an export holds by default)


@dataclass
class RobustConfig:
    max_nonfinite_steps: int = 20  # stop after more optimizer steps skipped for NaN/inf loss or grad norm
    max_consecutive_nonfinite: int = 5  # … or this many in a row


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelInitConfig = field(default_factory=ModelInitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    return load(TrainConfig, path, overrides)
