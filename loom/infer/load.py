"""Loading a model for inference: a BAGEL release folder or a loom export (same layout + `loom_config.json`).

Defaults (user-asks §A): bf16 weights on GPU, fp32 on CPU; tensors are assigned from safetensors straight onto
the target device (meta init, no full-size host copy, `load_bagel`). For cards that cannot hold the model:

- `device_map="balanced"`: decoder layers spread over all visible GPUs by memory (accelerate's
  `get_balanced_memory` + `infer_auto_device_map`; embeddings, heads, ViT, VAE on the first one, which therefore
  gets fewer layers);
- `device_map="offload"`: as many decoder layers on GPU 0 as `max_memory` allows (accelerate's
  `infer_auto_device_map`), the rest offloaded to CPU RAM (or `"disk"` to `offload_folder`) and streamed in per
  forward (accelerate hooks);
- or an explicit {module name: device} map.

The LLM passes dataclasses (routing indices, cached-block layout, KV buffers) that accelerate's hooks do not
move, so every dispatched decoder layer also gets a small pre-hook that moves them, and hands its hidden state
back to the main device (the KV cache of a layer stays on that layer's device).

Sequence layout: a loom export records every build setting that shaped its training sequences (loom_config.json
"build": VAE / ViT transforms, scaffold, K_max, N_max, temporal on/off, stepwise prompt …, `loom.train.export.
LAYOUT_KEYS`); `Loaded.build` carries them and `Loaded.layout` lists what was recorded, so inference lays
sequences out as trained (a history frame at the trained ViT resolution, not BAGEL's 980 px: 3.6× the tokens
at 518). A BAGEL release records nothing: BAGEL's inference transforms (VAE 1024/512, ViT 980/224), clamped
to the model's position tables, and loom's other defaults apply.

`quantize="int8"` (or per part, "und=int8,gen=fp8"): linear layers quantised with torchao while loading, one
layer at a time (`loom.infer.quantize`); recorded in `describe()` and so in result.json.

Entity tokens (`<model>`, `<object>` …, Loom §3.3): a loom export's tokenizer carries them and its rows hold
the trained embeddings — they load as saved (the ids are checked against loom_config.json "entities"). A plain
BAGEL release lacks them: they are registered on the fly (BAGEL's spare rows above the tokenizer, mean-
initialised, `loom.data.entities.add_entity_tokens`) with an `UntrainedEntityWarning`, so prompts with
entity tokens still encode each tag as one token.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data.builders import BuildConfig
from ..data.entities import EntityVocab, add_entity_tokens
from ..model.configs import LoomConfig
from ..model.weights import load_bagel
from . import quantize as q

DEVICE_MAPS = ("balanced", "offload", "disk")


@dataclass
class Loaded:
    model: nn.Module
    vae: nn.Module
    tokenizer: object
    config: LoomConfig
    build: BuildConfig  # inference layout knobs (K_max, N_max, scaffold …) from loom_config.json or defaults
    path: str
    dtype: torch.dtype
    device: torch.device
    device_map: dict | None = None
    entities: EntityVocab | None = None  # the registered entity tokens (ids)
    untrained_entities: tuple[str, ...] = ()  # registered at load time: mean-initialised, never trained
    layout: dict = dataclasses.field(default_factory=dict)  # the build settings the export recorded (trained)
    quantize: dict | None = None  # `quantize.describe`: mode per part, layers quantised (None: not quantised)

    def describe(self) -> dict:
        return {"path": self.path, "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
                "device_map": None if self.device_map is None else {k: str(v) for k, v in self.device_map.items()},
                "kind": "loom export" if (Path(self.path) / "loom_config.json").exists() else "BAGEL release",
                "quantize": self.quantize or {"spec": "none"}}


class UntrainedEntityWarning(UserWarning):
    """Entity tokens were missing from the model's tokenizer and got mean-initialised (untrained) rows."""


def ensure_entity_tokens(model: nn.Module, tok, tokens: tuple[str, ...], path: Path) -> EntityVocab:
    """Register `tokens` (no-op for those the tokenizer has); warn about the new, untrained ones. An export's
    recorded ids (loom_config.json "entities") must match its tokenizer."""
    f = path / "loom_config.json"
    recorded = (json.loads(f.read_text()).get("entities") or {}).get("entity_tokens", {}) if f.exists() else {}
    vocab = tok.get_vocab()
    wrong = {t: (i, vocab.get(t)) for t, i in recorded.items() if vocab.get(t) != i}
    if wrong:
        raise ValueError(f"{path}: tokenizer ids of entity tokens differ from loom_config.json "
                         f"(token: recorded, tokenizer): {wrong}")
    ev = add_entity_tokens(model, tok, tuple(dict.fromkeys([*recorded, *tokens])))
    if ev.added:
        warnings.warn(f"{path}: the tokenizer lacks the entity tokens {' '.join(ev.added)}; registered them with "
                      "mean-initialised rows — they are untrained (a plain BAGEL release): fine-tune before "
                      "relying on them", UntrainedEntityWarning, stacklevel=3)
    return ev


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPU (BAGEL's released inference precision), fp32 on CPU (bf16 matmuls are slow there)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def parse_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if name is None or name == "auto":
        return default_dtype(device)
    if isinstance(name, torch.dtype):
        return name
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(table)}")
    return table[name]


BAGEL_VAE_TRANSFORM = (1024, 512)  # BAGEL's inference resize rules (max, min side; bagel-spec §5.1)
BAGEL_VIT_TRANSFORM = (980, 224)


def default_transforms(cfg: LoomConfig) -> dict[str, tuple[int, int, int]]:
    """BAGEL's inference transforms (max, min, stride), clamped to what the model's position tables cover."""
    vae_lim = cfg.max_latent_size * cfg.pixels_per_latent_token
    vit_lim = cfg.vit_max_num_patch_per_side * cfg.vit.patch_size
    out = {}
    for name, (mx, mn), lim, stride in (("vae_transform", BAGEL_VAE_TRANSFORM, vae_lim, cfg.pixels_per_latent_token),
                                        ("vit_transform", BAGEL_VIT_TRANSFORM, vit_lim, cfg.vit.patch_size)):
        mx = min(mx, lim)
        out[name] = (mx, min(mn, mx), stride)
    return out


def build_config_from_export(path: Path, cfg: LoomConfig) -> tuple[BuildConfig, dict]:
    """(BuildConfig, the settings the export recorded) from loom_config.json (top level or under "build").
    Unrecorded transforms are BAGEL's (`default_transforms`), the rest loom's defaults."""
    extra: dict = {}
    f = path / "loom_config.json"
    if f.exists():
        d = json.loads(f.read_text())
        extra = {**{k: v for k, v in d.items() if not isinstance(v, dict)}, **d.get("build", {})}
    names = {f.name for f in dataclasses.fields(BuildConfig)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in extra.items() if k in names}
    recorded = dict(kw)
    for k, v in default_transforms(cfg).items():
        kw.setdefault(k, v)
    kw.setdefault("max_frames", cfg.max_frames)
    kw.setdefault("max_references", cfg.max_references)
    if not cfg.temporal_embedding:
        kw.setdefault("use_temporal", False)
    kw["n_max"] = min(kw.get("n_max", BuildConfig.n_max), kw["max_frames"])
    return BuildConfig(**kw), recorded


# ---- multi-device placement ------------------------------------------------------------------------------------
def layer_names(model: nn.Module) -> list[str]:
    return [f"language_model.model.layers.{i}" for i in range(len(model.language_model.model.layers))]


def plan_device_map(model: nn.Module, mode: str, num_gpus: int | None = None, max_memory_gib: float | None = None,
                    gpu_memory_gib: dict[int, float] | None = None) -> dict[str, str | int]:
    """{module: device}. Everything but the decoder layers stays on device 0 (the "main" device: the engine mixes
    embeddings, ViT and latent tokens there); accelerate's `infer_auto_device_map` places the decoder layers
    (whole layers, never split) in the memory left:

    - "balanced": per-GPU budgets from `get_balanced_memory` over the whole model, GPU 0's reduced by the
      modules it holds anyway, so GPU 0 gets fewer layers (28 layers + 3 layers' worth of fixed modules on 4
      GPUs: 5/9/9/5 layers, peak 9 layer-sizes per GPU; an even 7/7/7/7 split peaks at 10 on GPU 0);
    - "offload" / "disk": GPU 0 keeps `max_memory_gib` minus the fixed modules, accelerate fills it and puts the
      rest on "cpu" (streamed per forward) or "disk" (it also reserves room for the largest layer it streams).

    `gpu_memory_gib` ({gpu: GiB}, balanced only) replaces the free memory accelerate would query (planning)."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes, get_balanced_memory

    layers_mod = model.language_model.model.layers
    layers = layer_names(model)
    rest = [n for n, _ in model.named_children() if n != "language_model"]
    main: str | int = 0 if (torch.cuda.is_available() or gpu_memory_gib) else "cpu"
    fixed_modules = [*rest, "language_model.model.embed_tokens", "language_model.model.norm", "language_model.lm_head"]
    if getattr(model.language_model.model, "norm_moe_gen", None) is not None:
        fixed_modules.append("language_model.model.norm_moe_gen")
    dm: dict[str, str | int] = {n: main for n in fixed_modules}
    no_split = [type(layers_mod[0]).__name__]
    fixed = compute_module_sizes(model)[""] - compute_module_sizes(layers_mod)[""]
    if mode == "balanced":
        n = num_gpus or (len(gpu_memory_gib) if gpu_memory_gib else torch.cuda.device_count())
        if n < 1:
            raise RuntimeError("device_map='balanced' needs at least one CUDA device")
        given = {i: int(g * 2**30) for i, g in (gpu_memory_gib or {}).items()} or None
        budget = get_balanced_memory(model, max_memory=given, no_split_module_classes=no_split)
        budget = {k: v for k, v in budget.items() if not isinstance(k, int) or k < n}
        budget[0] = max(0, budget[0] - fixed)
    elif mode in ("offload", "disk"):
        spill = {"cpu": 2**60} if mode == "offload" else {"cpu": 0}  # cpu 0: accelerate spills to "disk"
        gpu = max(0, int((max_memory_gib or 0.0) * 2**30) - fixed) if main != "cpu" else None
        budget = {0: gpu, **spill} if gpu is not None else spill
    else:
        raise ValueError(f"unknown device_map {mode!r}; choose from {DEVICE_MAPS} or pass a dict")
    placed = infer_auto_device_map(layers_mod, max_memory=budget, no_split_module_classes=no_split)
    prefix = "language_model.model.layers"
    for name, dev in placed.items():  # "" = the whole stack, "i" = layer i
        for i in range(len(layers)) if name == "" else [int(name)]:
            dm[f"{prefix}.{i}"] = dev
    missing = [n for n in layers if n not in dm]
    if missing:
        raise RuntimeError(f"device map left {missing} unplaced: {placed}")
    return dm


def _move(x, device):
    if isinstance(x, Tensor):
        return x.to(device)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _move(getattr(x, f.name), device) for f in dataclasses.fields(x)
                                         if f.init})
    if isinstance(x, tuple):
        return tuple(_move(v, device) for v in x)
    if isinstance(x, list):
        return [_move(v, device) for v in x]
    return x


def _exec_device(dev, main: torch.device) -> torch.device:
    if dev in ("cpu", "disk"):
        return main  # offloaded weights are streamed to the main device
    return torch.device(f"cuda:{dev}") if isinstance(dev, int) else torch.device(dev)


def dispatch(model: nn.Module, device_map: dict[str, str | int], offload_folder: str | None = None) -> nn.Module:
    """accelerate's `dispatch_model` plus the device-move hooks loom's LLM needs (see module docstring)."""
    from accelerate import dispatch_model

    values = set(device_map.values())
    main = torch.device("cpu") if values <= {"cpu", "disk"} else _exec_device(
        next(v for v in device_map.values() if v not in ("cpu", "disk")), torch.device("cpu"))
    if "disk" in values and offload_folder is None:
        raise ValueError("device_map with 'disk' entries needs an offload_folder")
    model = dispatch_model(model, device_map=device_map, main_device=str(main), offload_dir=offload_folder)
    for i, layer in enumerate(model.language_model.model.layers):
        dev = _exec_device(device_map.get(f"language_model.model.layers.{i}", 0), main)

        def pre(mod, args, kwargs, dev=dev):
            return _move(args, dev), _move(kwargs, dev)

        def post(mod, args, out, main=main):
            x, kv = out
            return x.to(main), kv

        layer.register_forward_pre_hook(pre, with_kwargs=True)
        layer.register_forward_hook(post)
    return model


# ---- the loader --------------------------------------------------------------------------------------------
def load_pretrained(path: str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                    device_map: str | dict | None = None, max_memory_gib: float | None = None,
                    offload_folder: str | None = None, attn_backend: str | None = None,
                    verbose: bool = True, entity_tokens: tuple[str, ...] | None = None,
                    quantize: str | q.QuantizeSpec | None = None) -> Loaded:
    """(model, vae, tokenizer, config, build config) ready for `Engine`.

    `device=None` picks CUDA when available. `dtype=None` → bf16 on GPU, fp32 on CPU. `device_map` (see module
    docstring) loads to CPU first, then dispatches. `entity_tokens`: the entity vocabulary to ensure (None: the
    export's `build.entity_tokens`, else loom's defaults; `()`: only those the export records). `quantize`: see
    `loom.infer.quantize` (not combined with `device_map` yet)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist (a BAGEL release or a loom export)")
    dev = torch.device(device) if device is not None else default_device()
    dt = parse_dtype(dtype, dev)
    load_dev = "cpu" if device_map is not None else dev
    spec = q.QuantizeSpec.parse(quantize)
    if spec.active and device_map is not None:
        raise q.QuantizeError("--quantize with --device-map is not supported yet: quantise (the model then needs "
                              "≈ 2–4× less memory) or offload, not both")
    q.import_quietly()
    q.check_supported(spec, dev)
    counts = {"quantised": 0, "kept": 0}

    def quantise_layer(name: str, module: nn.Module) -> None:
        for k, v in q.quantize_module(module, name, spec).items():
            counts[k] += v

    model, vae, tok, cfg = load_bagel(path, device=load_dev, dtype=dt, verbose=verbose,
                                      on_module=quantise_layer if spec.active else None, streamed=q.streamed)
    build, layout = build_config_from_export(path, cfg)
    tokens = build.entity_tokens if entity_tokens is None else tuple(entity_tokens)
    entities = ensure_entity_tokens(model, tok, tokens, path)
    dm = None
    if device_map is not None:
        dm = device_map if isinstance(device_map, dict) else plan_device_map(model, device_map,
                                                                              max_memory_gib=max_memory_gib)
        model = dispatch(model, dm, offload_folder)
        main = _exec_device(dm.get("language_model.lm_head", 0), torch.device("cpu"))
        vae = vae.to(main)
        dev = main
    model.eval().requires_grad_(False)
    if attn_backend is not None:
        model.attn_backend = attn_backend
    elif dev.type == "cuda":
        from ..model.attention import default_backend

        model.attn_backend = default_backend(dev)
    return Loaded(model, vae, tok, cfg, build, str(path), dt, dev, dm, entities, entities.added, layout,
                  q.describe(spec, counts) if spec.active else None)
