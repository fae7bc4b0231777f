"""Loading the BAGEL release (and loom exports, which share its layout) loudly and strictly.

`load_bagel(dir)` reads `llm_config.json` + `vit_config.json` with the official overrides (ViT layers = JSON − 1,
QK-norm on, untied head, MoT layers), infers the BAGEL-level constants from tensor shapes, builds the model on
the meta device (no full-size host copy) and assigns `ema.safetensors` tensors straight onto the target device.
Every model key must be present; the only tolerated extra keys are the unused last SigLIP layer; a shape
mismatch is an error. Loom-only parameters absent from a BAGEL file (the temporal table) are zero-initialised.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from .configs import LLMConfig, LoomConfig, VAEConfig, ViTConfig
from .loom import TEMPORAL_KEY, Loom
from .vae import FluxAutoencoder, build_autoencoder, convert_flux_vae_state_dict


class CheckpointError(RuntimeError):
    pass


@dataclass
class LoadReport:
    path: str
    num_loaded: int = 0
    ignored: list[str] = field(default_factory=list)  # tolerated extra keys (unused SigLIP layer)
    initialised: list[str] = field(default_factory=list)  # Loom-only keys absent from the file (zero/mean init)

    def summary(self) -> str:
        parts = [f"loaded {self.num_loaded} tensors from {self.path}"]
        if self.ignored:
            prefix = os.path.commonprefix(self.ignored).rsplit(".", 1)[0]
            parts.append(f"ignored {len(self.ignored)} unused keys ({prefix}.*)")
        if self.initialised:
            parts.append(f"initialised {', '.join(self.initialised)} (not in the file)")
        return "; ".join(parts)


def group_keys(keys: list[str], limit: int = 12) -> str:
    """Compress `a.3.b`, `a.4.b` … into `a.*.b ×2` for readable error messages."""
    pattern = {k: re.sub(r"\.\d+\.", ".*.", k) for k in keys}
    c = Counter(pattern.values())
    # singletons keep their exact name; repeated patterns collapse to `a.*.b ×n`
    items = sorted({pattern[k] if c[pattern[k]] > 1 else k for k in keys})
    items = [f"{k} ×{c[k]}" if c.get(k, 0) > 1 else k for k in items]
    more = f" … (+{len(items) - limit} more patterns)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


class _Required(dict):
    """A JSON object or a shape table whose missing keys are a `CheckpointError` naming the file and the key."""

    def __init__(self, data: dict, path: Path, what: str) -> None:
        super().__init__(data)
        self.path, self.what = path, what

    def __missing__(self, key: str):
        raise CheckpointError(f"{self.path}: missing key {key!r} (needed for the {self.what}); is this a BAGEL "
                              "release / loom export file?")


def _read_json(path: Path, what: str) -> _Required:
    return _Required(json.loads(path.read_text()), path, what)


def llm_config_from_json(path: Path) -> LLMConfig:
    d = _read_json(path, "language model config")
    return LLMConfig(
        hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
        num_key_value_heads=d.get("num_key_value_heads", d["num_attention_heads"]), vocab_size=d["vocab_size"],
        rope_theta=float(d.get("rope_theta", 1e6)), rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=d.get("max_position_embeddings", 32768),
        qk_norm=True, mot=True,  # BAGEL loader overrides (bagel-spec §1.1)
    )


def vit_config_from_json(path: Path) -> ViTConfig:
    d = _read_json(path, "SigLIP config")
    return ViTConfig(
        hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"] - 1,  # BAGEL uses the penultimate layer: JSON − 1 built
        num_attention_heads=d["num_attention_heads"], patch_size=d["patch_size"], image_size=d["image_size"],
        layer_norm_eps=float(d.get("layer_norm_eps", 1e-6)),
    )


def vae_config_from_shapes(shapes: dict[str, tuple[int, ...]], path: str | Path = "ae.safetensors") -> VAEConfig:
    """FLUX AE geometry from `ae.safetensors` (the release hard-codes it; reading it keeps other fixtures working).

    Read from keys every FLUX autoencoder has: `encoder.conv_in` (ch), `decoder.conv_in` (z channels) and the
    decoder's first residual block per level, `decoder.up.{i}.block.0` (ch · ch_mult[i]) — the decoder has
    num_res_blocks + 1 blocks per level, so at least one even when the encoder has none (the encoder's
    `encoder.down.{i}.block.0` keys are absent then). A missing key is a `CheckpointError` naming file and key."""
    need = _Required(shapes, Path(path), "FLUX autoencoder geometry")
    ch = need["encoder.conv_in.weight"][0]
    z = need["decoder.conv_in.weight"][1]
    levels = sorted({int(m[1]) for k in shapes if (m := re.match(r"decoder\.up\.(\d+)\.block\.0\.", k))})
    if not levels:
        raise CheckpointError(f"{path}: missing key 'decoder.up.0.block.0.conv2.weight' (no decoder levels; needed "
                              "for the FLUX autoencoder geometry)")
    mult = [need[f"decoder.up.{i}.block.0.conv2.weight"][0] // ch for i in range(levels[-1] + 1)]
    blocks = len({int(m[1]) for k in shapes if (m := re.match(r"decoder\.up\.0\.block\.(\d+)\.", k))}) - 1
    return VAEConfig(kind="flux", ch=ch, ch_mult=mult, num_res_blocks=blocks, z_channels=z,
                     downsample=2 ** (len(mult) - 1))


def config_from_release(path: str | Path) -> LoomConfig:
    """LoomConfig of a BAGEL-layout folder. BAGEL-level constants come from the stored table shapes."""
    path = Path(path)
    for name in ("llm_config.json", "vit_config.json", "ema.safetensors"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path / name} not found: expected a BAGEL release or loom export folder")
    shapes = read_safetensors_shapes(path / "ema.safetensors")
    cfg = LoomConfig(llm=llm_config_from_json(path / "llm_config.json"),
                     vit=vit_config_from_json(path / "vit_config.json"))
    loom_json = path / "loom_config.json"  # written by loom exports: Loom-specific fields win over inference
    extra = json.loads(loom_json.read_text()) if loom_json.exists() else {}
    if "vae" in extra:
        cfg.vae = VAEConfig(**extra["vae"])
    elif (path / "ae.safetensors").exists():
        cfg.vae = vae_config_from_shapes(read_safetensors_shapes(path / "ae.safetensors"), path / "ae.safetensors")
    if "latent_pos_embed.pos_embed" in shapes:
        cfg.max_latent_size = int(round(shapes["latent_pos_embed.pos_embed"][0] ** 0.5))
    if "vit_pos_embed.pos_embed" in shapes:
        cfg.vit_max_num_patch_per_side = int(round(shapes["vit_pos_embed.pos_embed"][0] ** 0.5))
    if "vae2llm.weight" in shapes:  # token width = p² · z_channels
        cfg.latent_patch_size = int(round((shapes["vae2llm.weight"][1] / cfg.vae.z_channels) ** 0.5))
    # a release lacks whole branches only when they were switched off
    cfg.visual_und = "connector.fc1.weight" in shapes
    cfg.visual_gen = "vae2llm.weight" in shapes
    for k in ("temporal_embedding", "max_frames", "max_references", "latent_patch_size", "max_latent_size",
              "vit_max_num_patch_per_side", "visual_und", "visual_gen", "connector_act"):
        if k in extra:
            setattr(cfg, k, extra[k])
    if TEMPORAL_KEY in shapes and "max_frames" not in extra:
        cfg.max_frames = shapes[TEMPORAL_KEY][0] - 1 - cfg.max_references
    if TEMPORAL_KEY not in shapes and "temporal_embedding" not in extra:
        cfg.temporal_embedding = True  # a plain BAGEL file: the table starts at zero (Loom = BAGEL)
    return cfg


def load_state_dict_strict(model: nn.Module, path: Path, device: torch.device | str = "cpu",
                           dtype: torch.dtype | None = None, tolerated: re.Pattern | None = None,
                           on_module: Callable[[str, nn.Module], None] | None = None,
                           streamed: Callable[[str], bool] | None = None) -> LoadReport:
    """Assign every parameter from a safetensors file onto `device` (works for meta-initialised models).

    Missing keys and shape mismatches raise `CheckpointError` listing all offenders; unexpected keys raise unless
    they match `tolerated`. Loom-only keys may be missing: they are initialised and reported. With `on_module`,
    each submodule whose name `streamed` accepts is read, assigned and handed to `on_module(name, module)` before
    the next one is read (quantising while loading: one layer in the load dtype at a time)."""
    report = LoadReport(str(path))
    expected = dict(model.state_dict(keep_vars=True))
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        file_keys = set(f.keys())
        optional = {TEMPORAL_KEY}
        missing = sorted(k for k in expected if k not in file_keys and k not in optional)
        unexpected = sorted(k for k in file_keys if k not in expected)
        bad_extra = [k for k in unexpected if not (tolerated and tolerated.match(k))]
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys: {group_keys(missing)}")
        if bad_extra:
            problems.append(f"{len(bad_extra)} unexpected keys: {group_keys(bad_extra)}")
        mismatched = []
        for k in expected:
            if k in file_keys:
                got = tuple(f.get_slice(k).get_shape())
                want = tuple(expected[k].shape)
                if got != want:
                    mismatched.append(f"{k}: file {list(got)} vs model {list(want)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched[:10]))
        if problems:
            raise CheckpointError(f"{path}: cannot load strictly — " + " | ".join(problems)
                                  + ". Check that the folder matches its llm_config.json / vit_config.json.")
        def read(k: str) -> Tensor:
            t = f.get_tensor(k)
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        sd, done = {}, set()
        if on_module is not None:
            for name, mod in list(model.named_modules()):
                keys = [k for k in expected if k.startswith(name + ".")] if name and streamed(name) else []
                if keys and not done.intersection(keys):
                    mod.load_state_dict({k[len(name) + 1:]: read(k) for k in keys}, strict=True, assign=True)
                    on_module(name, mod)
                    done.update(keys)
        for k in expected:
            if k in file_keys and k not in done:
                sd[k] = read(k)
        report.ignored = unexpected
    for k, ref in expected.items():
        if k not in sd and k not in done:  # optional Loom-only key: zero init (temporal table: a fresh Loom = BAGEL)
            sd[k] = torch.zeros(ref.shape, dtype=dtype or torch.float32, device=device)
            report.initialised.append(k)
    missing = model.load_state_dict(sd, strict=not done, assign=True).missing_keys
    if done and set(missing) != done:
        raise CheckpointError(f"{path}: keys neither streamed nor loaded: {group_keys(sorted(set(missing) - done))}")
    report.num_loaded = len(sd) + len(done) - len(report.initialised)
    # keep the frozen sin-cos tables frozen after assign (assign replaces the Parameter objects)
    for name, p in model.named_parameters():
        if name.endswith("pos_embed.pos_embed"):
            p.requires_grad_(False)
    return report


def load_bagel(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
               with_vae: bool = True, with_tokenizer: bool = True, verbose: bool = True,
               config: LoomConfig | None = None, on_module: Callable[[str, nn.Module], None] | None = None,
               streamed: Callable[[str], bool] | None = None):
    """Build `Loom` from a BAGEL release (or loom export) folder. Returns (model, vae | None, tokenizer | None, cfg).

    `dtype=None` keeps the file's dtype; pass torch.bfloat16 for the memory-light default of inference.
    `on_module` / `streamed`: see `load_state_dict_strict` (quantising while loading)."""
    path = Path(path)
    cfg = config or config_from_release(path)
    with torch.device("meta"):
        model = Loom(cfg)
    tolerated = re.compile(rf"^vit_model\.vision_model\.encoder\.layers\.{cfg.vit.num_hidden_layers}\.")
    report = load_state_dict_strict(model, path / "ema.safetensors", device, dtype, tolerated, on_module, streamed)
    if verbose:
        print(f"[loom] {report.summary()}")
    vae = load_vae(path, cfg, device) if with_vae else None
    tok = None
    if with_tokenizer:
        from ..data.tokenizer import load_tokenizer

        tok = load_tokenizer(path)
    return model, vae, tok, cfg


def load_vae(path: str | Path, cfg: LoomConfig, device: torch.device | str = "cpu") -> nn.Module:
    """FLUX AE from `ae.safetensors` through the explicit key converter (strict), or the weightless pixel AE."""
    path = Path(path)
    vae = build_autoencoder(cfg.vae)
    if isinstance(vae, FluxAutoencoder):
        f = path / "ae.safetensors"
        if not f.exists():
            raise FileNotFoundError(f"{f} not found (the FLUX autoencoder weights of the release)")
        from safetensors.torch import load_file

        sd = convert_flux_vae_state_dict(load_file(str(f)), len(cfg.vae.ch_mult))
        expected = vae.ae.state_dict()
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        bad = [f"{k}: file {list(sd[k].shape)} vs model {list(v.shape)}" for k, v in expected.items()
               if k in sd and sd[k].shape != v.shape]
        if missing or unexpected or bad:
            raise CheckpointError(f"{f}: VAE keys do not match the FLUX layout — missing: {group_keys(missing)}; "
                                  f"unexpected: {group_keys(unexpected)}; shape: {'; '.join(bad[:5])}")
        vae.ae.load_state_dict(sd, strict=True)
    return vae.to(device).eval().requires_grad_(False)


def save_state_dict(tensors: dict[str, Tensor], path: str | Path) -> None:
    """Atomic safetensors write (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)
