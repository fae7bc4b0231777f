"""Resume state: sharded, exact, written atomically; keep-last-k retention; auto-resume.

Layout (zero-padded step folders, codebase-anchors §3.4):
  <run.dir>/checkpoints/step-0000500/
      state/                  torch.distributed.checkpoint (DCP) shards: model, optimizer, ema
      rng-rank00000.pt        python / numpy / torch (+ CUDA) RNG states of each rank
      tokenizer/              the tokenizer with its registered entity tokens (a resume reloads it)
      trainer_state.json      step, counters, scheduler, data position of every rank  ← written last
      config.yaml             the resolved TrainConfig
Everything is written into `step-0000500.tmp`, then renamed in one `os.replace`. A crash or kill mid-save leaves
only a `.tmp` folder (removed at the next start); the previous checkpoint is untouched. A folder is complete iff it
holds `trainer_state.json`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..config import atomic_write_text
from .parallel import DistInfo, barrier, broadcast_object

log = logging.getLogger("loom.train")
STEP_RE = re.compile(r"^step-(\d{7,})$")


@dataclass
class CheckpointConfig:
    every: int = 1000  # save resume state every N optimizer steps (0: only at the end / on SIGTERM)
    keep_last: int = 3  # keep the newest K resume checkpoints
    keep_every: int = 0  # additionally keep steps that are multiples of this (0: none)
    auto_resume: bool = True  # continue from the newest complete checkpoint of run.dir
    resume_from: str = ""  # explicit checkpoint folder (used when run.dir has none)
    reset_data: bool = False  # resume weights/optimizer but restart the data stream (changed rank layout)
    save_on_sigterm: bool = True  # SIGTERM → finish the current step, save, exit
    export_every: int = 0  # write an export every N steps (0: only at the end)
    export_at_end: bool = True
    export_weights: str = "ema"  # ema | raw: which weights an export's ema.safetensors holds
    export_dtype: str = "bf16"  # bf16 (the release's storage dtype) | fp32


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.exists():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").exists():
            out.append((int(m[1]), p))
    return sorted(out)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


SAVE_STAGES = ("save:start", "save:after_shards", "save:before_rename", "save:after_rename")


def _fault(point: str, step: int) -> None:
    """Test hook: LOOM_FAULT=<point> (any save) or <point>@<step> kills this process with SIGKILL at that point
    of a save (`SAVE_STAGES`)."""
    if os.environ.get("LOOM_FAULT") in (point, f"{point}@{step}"):
        os.kill(os.getpid(), 9)


class CheckpointManager:
    def __init__(self, run_dir: Path, cfg: CheckpointConfig, info: DistInfo) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.cfg, self.info = cfg, info
        if info.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for p in self.root.glob("*.tmp"):  # leftovers of an interrupted save
                shutil.rmtree(p, ignore_errors=True)
        barrier(info)

    def _state(self, model: nn.Module, optimizer, ema) -> dict:
        msd, osd = get_state_dict(model, optimizer)
        st = {"model": msd, "optim": osd}
        if ema is not None:
            st["ema"] = ema.state_dict()
        return st

    def save(self, step: int, model: nn.Module, optimizer, ema, trainer_state: dict, config_yaml: str,
             tokenizer=None) -> Path:
        final = self.root / step_dir_name(step)
        tmp = self.root / (step_dir_name(step) + ".tmp")
        if self.info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier(self.info)
        _fault("save:start", step)
        with warnings.catch_warnings():  # single-process DCP warns that it is single-process
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(self._state(model, optimizer, ema), checkpoint_id=str(tmp / "state"))
        torch.save(_rng_state(), tmp / f"rng-rank{self.info.rank:05d}.pt")
        _fault("save:after_shards", step)
        barrier(self.info)
        if self.info.is_main:
            atomic_write_text(tmp / "config.yaml", config_yaml)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp / "tokenizer"))
            atomic_write_text(tmp / "trainer_state.json", json.dumps(trainer_state, indent=1))
            _fsync_dir(tmp)
            _fault("save:before_rename", step)
            if final.exists():  # re-saving the same step (e.g. SIGTERM right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            _fault("save:after_rename", step)
            self.prune()
        barrier(self.info)
        return final

    def prune(self) -> None:
        found = list_checkpoints(self.root)
        keep = {s for s, _ in found[-max(1, self.cfg.keep_last):]}
        if self.cfg.keep_every > 0:
            keep |= {s for s, _ in found if s % self.cfg.keep_every == 0}
        for s, p in found:
            if s not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def find_resume(self) -> Path | None:
        path = None
        if self.info.is_main:
            if self.cfg.auto_resume:
                path = latest_checkpoint(self.root)
            if path is None and self.cfg.resume_from:
                path = Path(self.cfg.resume_from)
                if not (path / "trainer_state.json").exists():
                    raise FileNotFoundError(f"checkpoint.resume_from={path} is not a complete checkpoint folder")
        path = broadcast_object(str(path) if path else None, self.info)
        return Path(path) if path else None

    def load(self, path: Path, model: nn.Module, optimizer, ema) -> dict:
        """Restore model, optimizer, EMA and this rank's RNG in place; returns the trainer state."""
        st = self._state(model, optimizer, ema)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(_saved_part(st, path / "state"), checkpoint_id=str(path / "state"))
        set_state_dict(model, optimizer, model_state_dict=st["model"], optim_state_dict=st["optim"])
        if ema is not None:
            ema.load_state_dict(st["ema"])
        rng = path / f"rng-rank{self.info.rank:05d}.pt"
        if rng.exists():
            _set_rng_state(torch.load(rng, weights_only=False))
        return json.loads((path / "trainer_state.json").read_text())


def _saved_part(st: dict, state_dir: Path) -> dict:
    """`st` without the optimizer entries the checkpoint lacks. Checkpoints written before the optimizer state
    was created eagerly (`loom.train.optim.init_optimizer_state`) have no Adam state for parameters that never
    had a gradient (e.g. `lm_head` in a compose run); those keep the fresh state — step 0, zero moments —
    which is exactly what they had. Everything else (model, EMA, the other optimizer entries) stays strict."""
    saved = dcp.FileSystemReader(str(state_dir)).read_metadata().state_dict_metadata
    state = st["optim"].get("state", {})
    missing = [k for k, v in state.items() if any(f"optim.state.{k}.{leaf}" not in saved for leaf in v)]
    if not missing:
        return st
    log.warning("%s: no optimizer state for %d parameters that had no gradient when it was saved (e.g. %s); "
                "they start from a fresh state, as they would have", state_dir.parent, len(missing), missing[0])
    optim = {**st["optim"], "state": {k: v for k, v in state.items() if k not in missing}}
    return {**st, "optim": optim}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
