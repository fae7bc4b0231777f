"""The model that periodic samples (and other side jobs during training) run on.

One process: the live model, EMA weights swapped in when asked (restored exactly afterwards). Under FSDP the
live model is sharded and the inference engine calls its sub-modules directly (no FSDP hooks on those calls), so
rank 0 builds a plain `Loom` from the gathered full weights — the same gather an export does, LoRA adapters
merged — and the other ranks wait. The copy takes the gathered tensors by reference (meta-device construction,
`assign=True`): one full copy of the weights on rank 0 while it exists (bf16 on GPU under bf16 mixed precision,
the master dtype otherwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..model.loom import Loom
from . import parallel


@contextlib.contextmanager
def sampling_model(trainer, use_ema: bool) -> Iterator[nn.Module | None]:
    """Yields the model to sample with in eval mode (None on ranks other than 0 under FSDP); collective under
    FSDP, so every rank must enter it. The training model is back in train mode on exit."""
    live = trainer.model
    try:
        if not trainer.info.distributed:
            swap = trainer.ema.swapped_in(live) if use_ema and trainer.ema is not None else contextlib.nullcontext()
            with swap:
                live.eval()
                yield live
            return
        sd = trainer.export_weights(use_ema)  # collective; full weights on rank 0 only
        copy = None
        if trainer.info.is_main:
            with torch.device("meta"):
                copy = Loom(trainer.model_cfg)
            copy.load_state_dict(sd, strict=True, assign=True)
            # on GPU in the compute dtype (bf16: half of an fp32 master copy next to the training shards)
            bf16 = trainer.info.device.type == "cuda" and trainer.cfg.parallel.mixed_precision == "bf16"
            copy = copy.to(trainer.info.device, torch.bfloat16 if bf16 else None).eval()
            copy.attn_backend = live.attn_backend
        del sd
        try:
            yield copy
        finally:
            parallel.barrier(trainer.info)
    finally:
        live.train()
