"""Weight quantisation for inference through torchao, per part of the model, applied while loading.

    --quantize int8                    # every part: understanding expert, generation expert, ViT
    --quantize und=int8,gen=fp8        # per part; parts not named stay in the load dtype
    --quantize gen=nf4,und=int8,vit=none

Modes (weight-only: activations and the KV cache stay in the load dtype):
- `int8`: torchao `Int8WeightOnlyConfig` — per-channel symmetric int8, CPU and GPU (≈ 2× less than bf16).
- `fp8`: torchao `Float8WeightOnlyConfig` (e4m3, per-channel) — on GPUs with fp8 (compute capability ≥ 8.9:
  Ada, Hopper, Blackwell) or on CPU (emulated matmul: the memory saving is real, the speed is not).
- `nf4`: torchao's NF4 tensor (QLoRA's 4-bit NormalFloat, blocks of 64, double-quantised scales) — CPU and GPU.
  One library for every mode (torchao); bitsandbytes would add a second for the same format.

Parts (user-asks §B.7: int4 on *all* layers degrades BAGEL, so each part is chosen on its own): `und` = the
understanding expert's linear layers of every decoder layer (q/k/v/o, MLP), `gen` = their generation-expert
twins (`*_moe_gen`), `vit` = the SigLIP encoder layers. Embeddings, lm_head, the connector, vae2llm / llm2vae,
the timestep embedder and the VAE are never quantised (small, or where errors reach every token).

`load_pretrained(..., quantize=...)` streams: each decoder / ViT layer is read in the load dtype, quantised and
only then is the next one read (`loom.model.weights.load_state_dict_strict(on_module=...)`), so no full-precision
copy of the model is ever held.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

QUANT_MODES = ("none", "int8", "fp8", "nf4")
PARTS = ("und", "gen", "vit")
_LAYER = re.compile(r"^(language_model\.model\.layers|vit_model\.vision_model\.encoder\.layers)\.\d+$")


class QuantizeError(ValueError):
    """A quantisation request this machine or model cannot honour (one line, names the fix)."""


@dataclass(frozen=True)
class QuantizeSpec:
    und: str = "none"
    gen: str = "none"
    vit: str = "none"

    @classmethod
    def parse(cls, text: str | QuantizeSpec | None) -> QuantizeSpec:
        """"int8" (every part), "none", or "part=mode,…" with parts und / gen / vit (unnamed parts: none)."""
        if isinstance(text, QuantizeSpec):
            return text
        if text is None or not str(text).strip():
            return cls()
        text = str(text).strip()
        if "=" not in text:
            if text not in QUANT_MODES:
                raise QuantizeError(f"--quantize {text!r}: choose a mode from {', '.join(QUANT_MODES)} or give "
                                    "parts, e.g. und=int8,gen=fp8,vit=none")
            return cls(text, text, text)
        parts: dict[str, str] = {}
        for entry in text.split(","):
            part, _, mode = (x.strip() for x in entry.partition("="))
            if part not in PARTS or mode not in QUANT_MODES or part in parts:
                raise QuantizeError(f"--quantize {text!r}: each entry is part=mode with part in {', '.join(PARTS)} "
                                    f"(each once) and mode in {', '.join(QUANT_MODES)}; got {entry.strip()!r}")
            parts[part] = mode
        return cls(**parts)

    @property
    def active(self) -> bool:
        return any(m != "none" for m in (self.und, self.gen, self.vit))

    def mode(self, part: str | None) -> str:
        return "none" if part is None else getattr(self, part)

    def __str__(self) -> str:
        if self.und == self.gen == self.vit:
            return self.und
        return ",".join(f"{p}={getattr(self, p)}" for p in PARTS)

    def to_json(self) -> dict:
        return {p: getattr(self, p) for p in PARTS}


def part_of(name: str) -> str | None:
    """The part a parameter or module name belongs to (None: never quantised)."""
    if name.startswith("language_model.model.layers."):
        return "gen" if "_moe_gen" in name else "und"
    if name.startswith("vit_model.vision_model.encoder.layers."):
        return "vit"
    return None


def streamed(name: str) -> bool:
    """Modules loaded one at a time when quantising (decoder layers, ViT encoder layers)."""
    return _LAYER.match(name) is not None


@contextmanager
def _quiet_torchao():
    # torchao logs that its CUDA-only kernels (mxfp8, cutlass sm90a) do not load on this build, and torch warns
    # about its enum registrations: noise for weight-only quantisation, which needs neither
    # (and diffusers, which imports torchao for its own quantizers, warns that torchao ≥ 0.18 moved NF4Tensor)
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree", "diffusers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def import_quietly() -> bool:
    """Import torchao (when installed) with its load-time noise silenced — before diffusers does so loudly while
    the VAE is built. True when torchao is available."""
    try:
        with _quiet_torchao():
            import torchao  # noqa: F401
    except ImportError:
        return False
    try:  # what diffusers imports with the VAE when torchao is installed (its logging configured first)
        from diffusers.utils import logging as _dl

        _dl.get_logger("diffusers")
        with _quiet_torchao():
            import diffusers.quantizers.torchao.torchao_quantizer  # noqa: F401
    except Exception:  # another diffusers layout: only the noise stays
        pass
    return True


def check_supported(spec: QuantizeSpec, device: torch.device | str) -> None:
    """Raise `QuantizeError` (one line, with the fix) when `spec` cannot run on `device`."""
    if not spec.active:
        return
    if not import_quietly():
        raise QuantizeError("--quantize needs torchao: pip install 'loom[quant]' (or pip install torchao)")
    dev = torch.device(device)
    if "fp8" in spec.to_json().values() and dev.type == "cuda":
        cap = torch.cuda.get_device_capability(dev)
        if cap < (8, 9):
            raise QuantizeError(f"--quantize fp8 needs a GPU with fp8 (compute capability ≥ 8.9: Ada, Hopper); "
                                f"{torch.cuda.get_device_name(dev)} has {cap[0]}.{cap[1]} — use int8 or nf4")


def _nf4_fits(w: Tensor) -> bool:
    return w.numel() % (64 * 256) == 0  # 64-value blocks, scales double-quantised in blocks of 256


def quantize_linear(lin: nn.Linear, mode: str) -> bool:
    """Quantise one Linear's weight in place (bias untouched); False when it was left as it is (nf4 needs the
    weight size to be a multiple of 64 × 256 values)."""
    if mode == "none":
        return False
    with _quiet_torchao():
        if mode == "nf4":
            from torchao.quantization import to_nf4

            if not _nf4_fits(lin.weight):
                return False
            lin.weight = nn.Parameter(to_nf4(lin.weight.detach()), requires_grad=False)
            return True
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        config = {"int8": Int8WeightOnlyConfig, "fp8": Float8WeightOnlyConfig}[mode]()
        holder = nn.Sequential(lin)  # quantize_ converts children
        quantize_(holder, config)
    return True


def quantize_module(module: nn.Module, prefix: str, spec: QuantizeSpec) -> dict[str, int]:
    """Quantise every nn.Linear inside `module` (named `prefix`) by its part. Returns {"quantised": n, "kept": m}
    (kept: a mode was asked for but the layer's shape does not fit it)."""
    done = kept = 0
    for name, sub in list(module.named_modules()):
        if isinstance(sub, nn.Linear):
            mode = spec.mode(part_of(f"{prefix}.{name}" if name else prefix))
            if mode != "none":
                ok = quantize_linear(sub, mode)
                done, kept = done + ok, kept + (not ok)
    return {"quantised": done, "kept": kept}


def tensor_nbytes(t: Tensor) -> int:
    """Bytes a (possibly torchao subclass) tensor holds: the sum over its inner tensors."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) is not torch.Tensor and type(t) is not nn.Parameter:
        names, _ = t.__tensor_flatten__()
        return sum(tensor_nbytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def linear_weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the Linear weights of each part (und / gen / vit) as stored (quantised or not)."""
    out = dict.fromkeys(PARTS, 0)
    for name, mod in model.named_modules():
        part = part_of(name)
        if part is not None and isinstance(mod, nn.Linear):
            out[part] += tensor_nbytes(mod.weight)
    return out


def describe(spec: QuantizeSpec, counts: dict[str, int]) -> dict:
    """What result.json records: the mode per part and how many linear layers it applied to."""
    return {"spec": str(spec), "parts": spec.to_json(), **counts, "library": "torchao"}
