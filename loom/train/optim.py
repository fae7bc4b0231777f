"""What trains and how: freeze options, optional LoRA (peft), AdamW and the LR schedule.

Freeze semantics (bagel-spec §2.4): `vit` freezes the SigLIP tower and its connector; `llm` freezes the whole
language model (both experts, embeddings, head); `und` freezes the understanding expert — every LLM tensor that
is not a `*_moe_gen` twin, i.e. the original Qwen weights incl. embeddings and lm_head. BAGEL's `freeze_und` also
*detaches* und activations inside the forward (`und_detach: true` reproduces that through
`LanguageModel.freeze_und`); by default loom freezes the parameters only, so gradients still flow through und
K/V into generation-expert weights of earlier clean images and entity-token embedding rows can still learn.

Entity tokens under a freeze (Loom §3.3): `<model>`, `<object>` … are new rows of `embed_tokens` / `lm_head`,
which `und` / `llm` / LoRA freeze. They must still learn, so (`optim.train_entity_rows`, default on) those two
tensors stay `requires_grad` and a *row gradient mask* zeroes every non-entity row after backward, before
clipping (`mask_row_gradients`): the grad norm sees only entity rows, Adam's moments of the other rows stay
exactly zero so their update is exactly zero, and the tensors sit in a weight-decay-free parameter group so
AdamW's decoupled decay cannot move them either (entity rows are not decayed). Chosen over a separate
trainable delta table because it keeps the release key layout (export, checkpoints, FSDP sharding and
`load_bagel` unchanged) at the cost of optimizer / EMA state for the full embedding and head (BAGEL-7B:
2 × 152064 × 3584 rows, ≈ 4.4 GB fp32 per state, sharded under FSDP).

Every trainable parameter steps every optimizer step (as BAGEL's FSDP1 flat parameters do): a parameter the
step's samples did not use gets an exact-zero gradient (`Loom._unused`, `fill_missing_grads`), so Adam's step
count and moments advance uniformly whatever the task mix, 1 process equals N processes, and the optimizer
state exists for every parameter from the start (`init_optimizer_state`) — a checkpoint of any step, of any
recipe (compose / style data never give `lm_head` a gradient), loads into a fresh optimizer.

LoRA (`optim.lora`): peft adapters on the attention projections; Loom's own new parameters still train in full
— the temporal table (`lora.full_params`) and the entity rows (row mask above) — so a LoRA run is not silently
the "w/o Time Embedding" ablation. Exports merge the adapters with peft's `merge_and_unload`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class FreezeConfig:
    vit: bool = False  # SigLIP tower + connector + vit_pos_embed
    und: bool = False  # understanding expert of the LLM (everything without the _moe_gen suffix)
    und_detach: bool = False  # with und: also detach und activations (BAGEL's exact freeze_und; entity
    #                           embedding rows then get no gradient)
    llm: bool = False  # the whole language model


@dataclass
class LoraConfig:
    enabled: bool = False  # train low-rank adapters only (base weights frozen); exports merge them
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # regex over module names (peft full-match): all LLM attention projections of both experts
    target_modules: str = r".*language_model\.model\.layers\.\d+\.self_attn\.[qkvo]_proj(_moe_gen)?"
    # parameter-name prefixes that train as full parameters next to the adapters (Loom's temporal table; the
    # entity rows train through optim.train_entity_rows)
    full_params: list[str] = field(default_factory=lambda: ["temporal_embed."])


@dataclass
class OptimConfig:
    lr: float = 2.5e-5  # Loom §4.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # BAGEL
    eps: float = 1e-15  # BAGEL
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine (both with linear warm-up)
    warmup_steps: int = 0
    min_lr: float = 1e-7  # cosine floor
    max_grad_norm: float = 1.0  # 0 disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step
    # if > 0: exactly this many samples per optimizer step (all ranks): each rank takes global / ranks samples,
    # packed into as many micro-batches of ≤ data.batch_size samples / data.max_tokens tokens as they need (the
    # step log's `micro_batches`); grad_accum is then ignored
    global_batch_size: int = 0
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # entity-token rows of embed_tokens / lm_head stay trainable when freeze / LoRA freeze those tensors
    train_entity_rows: bool = True


def apply_freeze(model: nn.Module, cfg: FreezeConfig) -> list[str]:
    """Set requires_grad=False on the frozen groups; returns the frozen parameter names."""
    frozen = []
    for name, p in model.named_parameters():
        is_llm = name.startswith("language_model.")
        hit = (cfg.llm and is_llm) or (cfg.und and is_llm and "_moe_gen" not in name) or (
            cfg.vit and name.split(".")[0] in ("vit_model", "connector", "vit_pos_embed"))
        if hit:
            p.requires_grad_(False)
            frozen.append(name)
    if cfg.und and cfg.und_detach:
        model.language_model.freeze_und = True
    return frozen


def _peft_config(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=cfg.target_modules)


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Inject LoRA adapters (peft) into the matching Linear layers and freeze everything else except the
    `cfg.full_params` prefixes (the temporal table), which keep training in full."""
    from peft import inject_adapter_in_model

    full = {n for n, p in model.named_parameters()  # unless a freeze option froze them
            if p.requires_grad and any(n.startswith(f) for f in cfg.full_params)}
    model = inject_adapter_in_model(_peft_config(cfg), model)
    n = 0
    for name, p in model.named_parameters():
        is_lora = "lora_" in name
        p.requires_grad_(is_lora or name in full)
        n += is_lora
    if n == 0:
        raise ValueError(f"LoRA target_modules {cfg.target_modules!r} matched no module")
    return model


def merge_lora_state_dict(sd: dict[str, torch.Tensor], cfg: LoraConfig, model_cfg) -> dict[str, torch.Tensor]:
    """Release-layout weights from a LoRA state dict, merged by peft's `merge_and_unload` (W + (alpha/r)·B·A).
    The adapters are re-attached to a meta-device `Loom` that takes `sd`'s tensors by reference (no second copy
    of a 7B model); `safe_merge` writes merged copies, so `sd` — possibly the live weights — is never changed."""
    from peft.tuners.lora import LoraModel

    from ..model.loom import Loom

    with torch.device("meta"):
        base = Loom(model_cfg)
    lm = LoraModel(base, _peft_config(cfg), "default")
    lm.model.load_state_dict(sd, strict=True, assign=True)
    return {k: v for k, v in lm.merge_and_unload(safe_merge=True).state_dict().items()}


VOCAB_PARAMS = ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")


def unfreeze_entity_rows(model: nn.Module, ids: list[int] | tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Make the frozen vocabulary tensors (embed_tokens / lm_head) trainable again, restricted to the rows
    `ids`. Returns {parameter name: bool row mask [rows]} for `mask_row_gradients`; tensors that were
    trainable anyway (no freeze) get no mask — every row trains as usual."""
    if not ids:
        return {}
    params = dict(model.named_parameters())
    masks = {}
    for name in VOCAB_PARAMS:
        p = params.get(name)
        if p is None or p.requires_grad:
            continue
        mask = torch.zeros(p.shape[0], dtype=torch.bool)
        mask[list(ids)] = True
        p.requires_grad_(True)
        masks[name] = mask
    return masks


class RowGradMask:
    """Zeroes the gradient of every row outside the mask (after backward, before clipping). Works on plain
    tensors and on FSDP2 DTensor shards (the mask is distributed like the parameter on first use)."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        self.items = [(params[n], m) for n, m in masks.items()]
        self._local: dict[int, torch.Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.items)

    @torch.no_grad()
    def __call__(self) -> None:
        for p, mask in self.items:
            g = p.grad
            if g is None:
                continue
            local = g.to_local() if hasattr(g, "to_local") else g
            key = id(p)
            if key not in self._local:
                m = mask.to(local.device)
                if hasattr(g, "to_local"):  # DTensor: shard the [rows, 1] mask like the parameter
                    from torch.distributed.tensor import distribute_tensor

                    m = distribute_tensor(m[:, None].to(g.dtype), g.device_mesh, g.placements).to_local() > 0
                    m = m[:, 0]
                self._local[key] = m.view(-1, *([1] * (local.dim() - 1)))
            local.masked_fill_(~self._local[key], 0)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def trainable_groups(model: nn.Module, row_masks: dict[str, torch.Tensor]) -> dict[str, int]:
    """{group: trainable element count} for the start-of-run log: LoRA adapters, each top-level module trained
    in full, and the row-masked vocabulary tensors counted by their trainable (entity) rows only."""
    out: dict[str, int] = {}
    for name, p in trainable_parameters(model):
        if "lora_" in name:
            key, n = "LoRA adapters", p.numel()
        elif name in row_masks:
            key, n = "entity rows (row-masked embed_tokens / lm_head)", int(row_masks[name].sum()) * p[0].numel()
        else:
            key, n = name.split(".")[0], p.numel()
        out[key] = out.get(key, 0) + n
    return out


@torch.no_grad()
def init_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Create the optimizer's state for every parameter now, exactly as its lazy first step would (one step on
    zero gradients at lr 0, then the step counters reset to 0) — the optimizer's own code picks dtype, device
    and layout (DTensor shards under FSDP). Saved state then always covers every parameter."""
    saved = []
    for group in opt.param_groups:
        saved.append(group["lr"])
        group["lr"] = 0.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    for group, lr in zip(opt.param_groups, saved):
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    for st in opt.state.values():
        if torch.is_tensor(st.get("step")):
            st["step"].zero_()
        elif "step" in st:
            st["step"] = 0


def fill_missing_grads(params: list[torch.Tensor]) -> None:
    """Exact-zero gradients for parameters no sample of the step used (see the module docstring)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def build_optimizer(model: nn.Module, cfg: OptimConfig, no_decay: set[str] | frozenset[str] = frozenset()
                    ) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; `no_decay` names (row-masked vocabulary tensors) get weight_decay 0
    so the decoupled decay never moves their frozen rows."""
    named = trainable_parameters(model)
    if not named:
        raise ValueError("nothing to train: every parameter is frozen (check optim.freeze / optim.lora)")
    groups = [{"params": [p for n, p in named if n not in no_decay]}]
    nd = [p for n, p in named if n in no_decay]
    if nd:
        groups.append({"params": nd, "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    init_optimizer_state(opt)
    return opt


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the base LR at optimizer step s (0-based); stepped once per optimizer step.

    Hand-written, not `transformers.get_scheduler`: transformers' (BAGEL's) warm-up is s / W (its first step runs
    at lr 0) where this one is (s + 1) / W, so they differ during a warm-up and existing runs (the shapes demo
    warms up 60 steps) would change; without a warm-up — every paper recipe — both give the same LRs
    (tests/train/test_optim.py)."""

    def f(s: int) -> float:
        if cfg.warmup_steps > 0 and s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "cosine":
            prog = min(1.0, (s - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
            floor = cfg.min_lr / cfg.lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog))
        raise ValueError(f"unknown optim.schedule {cfg.schedule!r} (constant / cosine)")

    return f


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    lr_lambda(cfg, total_steps)(0)  # validate the name early
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))
