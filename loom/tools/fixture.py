"""Reading a golden fixture folder (the format of tests/fixtures/bagel-tiny: cases.json + cases.safetensors +
release files) and comparing tensors at the tolerance each tensor declares."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor


@dataclass
class Fixture:
    root: Path
    meta: dict
    tensors: dict[str, Tensor]

    @classmethod
    def load(cls, root: str | Path) -> Fixture:
        root = Path(root)
        cases = root / "cases.json"
        if not cases.exists():
            raise FileNotFoundError(f"{cases} not found: not a reference fixture folder")
        meta = json.loads(cases.read_text())
        return cls(root, meta, load_file(str(root / meta.get("tensor_file", "cases.safetensors"))))

    @property
    def cases(self) -> dict:
        return self.meta["cases"]

    def tolerance(self, key: str) -> dict:
        return self.meta["tensors"].get(key, {}).get("tolerance", {"atol": 1e-4, "rtol": 1e-4})

    def transform(self, name: str):
        from ..data.transforms import ImageTransform

        t = self.meta["image_transforms"][name]
        return ImageTransform(t["max_image_size"], t["min_image_size"], t["image_stride"],
                              t.get("max_pixels", 14 * 14 * 9 * 1024))

    def image(self, file: str):
        from PIL import Image

        return Image.open(self.root / "images" / Path(file).name) if not (self.root / file).exists() \
            else Image.open(self.root / file)


def compare(got: Tensor, ref: Tensor, tol: dict) -> tuple[float, bool, str]:
    """(max abs error, ok, note) of `got` against `ref` under a fixture tolerance entry."""
    got = torch.as_tensor(got).detach().cpu()
    if tuple(got.shape) != tuple(ref.shape):
        return float("inf"), False, f"shape {list(got.shape)} != {list(ref.shape)}"
    if ref.numel() == 0:
        return 0.0, True, ""
    if tol.get("exact"):
        if ref.dtype == torch.bool or got.dtype == torch.bool:
            diff = (got.bool() != ref.bool()).float()
        else:
            diff = (got.double() - ref.double()).abs()
        err = float(diff.max())
        return err, err == 0.0, ""
    if "max_abs_diff" in tol:  # uint8 images: a level off at a truncation boundary is allowed, rarely
        diff = (got.int() - ref.int()).abs()
        frac = float((diff > 0).float().mean())
        ok = int(diff.max()) <= tol["max_abs_diff"] and frac <= tol["max_mismatch_fraction"]
        return float(diff.max()), ok, f"mismatch {frac:.4f}"
    g, r = got.double(), ref.double()
    both_inf = torch.isinf(g) & torch.isinf(r) & (torch.sign(g) == torch.sign(r))
    diff = torch.where(both_inf, torch.zeros_like(g), (g - r).abs())
    diff = torch.nan_to_num(diff, nan=float("inf"))
    bound = tol.get("atol", 1e-4) + tol.get("rtol", 1e-4) * torch.where(both_inf, torch.zeros_like(r), r.abs())
    return float(diff.max()), bool((diff <= bound).all()), ""
