"""Throughput, MFU and the metric sinks (console, metrics.jsonl, wandb).

MFU follows BAGEL (bagel-spec §6.4): language model only, one expert path per token,
  FLOPs = 6·N_dense·Σtokens + 12·d·H·L·Σ_samples len²,  N_dense = L·(3·D·F + D·(2·H·d + 2·Hkv·d)) + 2·V·D,
with attention counted as full (non-causal) forward + backward; MFU = FLOPs/s / (peak · world_size).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.configs import LLMConfig

log = logging.getLogger("loom.train")

# bf16 dense peak TFLOPs by device name (BAGEL's table)
PEAK_TFLOPS = {"MI300X": 1336.0, "H100": 989.0, "H800": 989.0, "H200": 989.0, "A100": 312.0, "A800": 312.0,
               "L40": 181.05, "L20": 119.5, "H20": 148.0, "910B": 354.0, "3070 Ti": 21.75}


@dataclass
class LogConfig:
    every: int = 10  # optimizer steps between metric lines
    level: str = "info"  # console level: debug | info | warning | error (`loom train --log-level`); files keep info
    progress: bool = True  # rank 0: a progress bar over the step budget with rate and ETA (tqdm)
    wandb: bool = False
    wandb_project: str = "loom"
    wandb_mode: str = "offline"  # offline | online | disabled
    peak_tflops: float = 0.0  # per device; 0: detect from the device name (CPU / unknown GPU: MFU null)


def dense_params(c: LLMConfig) -> int:
    d, h, hkv, hd, L = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.num_hidden_layers
    return L * (3 * d * c.intermediate_size + d * (h * hd + 2 * hkv * hd + h * hd)) + 2 * c.vocab_size * d


def train_flops(c: LLMConfig, num_tokens: float, sum_len_sq: float) -> float:
    return 6 * dense_params(c) * num_tokens + 12 * c.head_dim * c.num_attention_heads * c.num_hidden_layers * sum_len_sq


def peak_tflops(device: torch.device, override: float = 0.0) -> float:
    if override > 0:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for k, v in PEAK_TFLOPS.items():
            if k in name:
                return v
        return 0.0
    return 0.0  # CPU: no meaningful peak; MFU is then reported as null (tflops stays, it is measured)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, TypeError, AttributeError):
        return None


class MetricsSink:
    """Rank-0 sink: one JSON object per line in `metrics.jsonl`, a console line, and wandb if enabled."""

    def __init__(self, run_dir: Path, cfg: LogConfig, run_name: str, config_dict: dict, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb = None
        if enabled and cfg.wandb and cfg.wandb_mode != "disabled":
            try:
                import wandb

                self.wandb = wandb.init(project=cfg.wandb_project, name=run_name, id=run_name, resume="allow",
                                        mode=cfg.wandb_mode, dir=str(run_dir), config=config_dict)
            except Exception as e:  # logging must never stop training
                log.warning("wandb unavailable (%s); continuing with metrics.jsonl only", e)

    def truncate_after(self, step: int) -> None:
        """At start (resume from `step`, or 0 without a checkpoint), drop the lines of metrics.jsonl and
        events.jsonl logged after `step`: those steps run again, so each step ends up logged exactly once. A
        torn last line (killed mid-write) is dropped too."""
        if not self.enabled:
            return
        from ..config import atomic_write_text

        for path in (self.path, self.path.with_name("events.jsonl")):
            if not path.exists():
                continue
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            keep = [ln for ln in lines if _step_of(ln) is not None and _step_of(ln) <= step]
            if len(keep) != len(lines):
                atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        keys = ("loss", "ce", "mse", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_gb")
        parts = [f"{k}={rec[k]:.4g}" for k in keys if isinstance(rec.get(k), (int, float))]
        log.info("step %d | %s", rec["step"], " ".join(parts))
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=rec["step"])

    def event(self, rec: dict) -> None:
        """Non-metric events (skipped samples / steps) go to events.jsonl so nothing disappears silently."""
        if not self.enabled:
            return
        with open(self.path.with_name("events.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
