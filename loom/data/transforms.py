"""Image preprocessing exactly as BAGEL's `ImageTransform` (bagel-spec §5.1, fixture README "Images"):
RGB conversion over white, the long/short-edge resize rule with Python's round-half-to-even snapping, PIL
bicubic resize, then (x/255 − 0.5)/0.5. Plus ViT patchify in (py, px, rgb) order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_rgb(img: Image.Image) -> Image.Image:
    """Alpha-composite RGBA / transparent images over white; convert anything else to RGB."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        out = Image.new("RGB", img.size, (255, 255, 255))
        out.paste(img, mask=img.split()[3])
        return out
    return img.convert("RGB")


def _snap(x: float, stride: int) -> int:
    return max(stride, round(x / stride) * stride)


def resize_size(width: int, height: int, max_size: int, min_size: int, stride: int,
                max_pixels: int = 14 * 14 * 9 * 1024) -> tuple[int, int]:
    """Target (W, H) of BAGEL's MaxLongEdgeMinShortEdgeResize.

    The max_pixels step multiplies each side by the *area* ratio (not its square root) — an official quirk kept
    for parity."""
    scale = min(max_size / max(width, height), 1.0)
    scale = max(scale, min_size / min(width, height))
    w, h = _snap(round(width * scale), stride), _snap(round(height * scale), stride)
    if w * h > max_pixels:
        s = max_pixels / (w * h)
        w, h = _snap(round(w * s), stride), _snap(round(h * s), stride)
    if max(w, h) > max_size:
        s = max_size / max(w, h)
        w, h = _snap(round(w * s), stride), _snap(round(h * s), stride)
    return w, h


@dataclass
class ImageTransform:
    """(max_size, min_size, stride, max_pixels); BAGEL inference uses VAE (1024, 512, 16), ViT (980, 224, 14)."""

    max_size: int
    min_size: int
    stride: int
    max_pixels: int = 14 * 14 * 9 * 1024

    def resize(self, img: Image.Image) -> Image.Image:
        img = to_rgb(img)
        w, h = resize_size(img.width, img.height, self.max_size, self.min_size, self.stride, self.max_pixels)
        return img.resize((w, h), Image.BICUBIC) if (w, h) != img.size else img

    def __call__(self, img: Image.Image) -> Tensor:
        return pil_to_tensor(self.resize(img))


def pil_to_tensor(img: Image.Image) -> Tensor:
    """uint8 HWC → float [3, H, W] in [-1, 1]."""
    arr = np.asarray(to_rgb(img), dtype=np.uint8)
    return uint8_to_tensor(torch.from_numpy(arr.copy()))


def uint8_to_tensor(arr: Tensor) -> Tensor:
    """[H, W, 3] uint8 → [3, H, W] float32, (u/255 − 0.5)/0.5."""
    return (arr.permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5


def tensor_to_pil(img: Tensor) -> Image.Image:
    """[3, H, W] in [-1, 1] → PIL (truncating, like the official decode)."""
    u8 = ((img.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8)
    return Image.fromarray(u8.permute(1, 2, 0).numpy())


def patchify_image(img: Tensor, patch: int) -> Tensor:
    """[3, H, W] → [(H/p)·(W/p), p·p·3]; token k = r·(W/p) + c, element (py·p + px)·3 + rgb."""
    c, h, w = img.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not a multiple of the ViT patch size {patch}")
    gh, gw = h // patch, w // patch
    return img.reshape(c, gh, patch, gw, patch).permute(1, 3, 2, 4, 0).reshape(gh * gw, patch * patch * c)


def grid_position_ids(gh: int, gw: int, grid: int) -> Tensor:
    """Row-major r·grid + c ids for a gh×gw token grid (small images use the top-left part, no interpolation)."""
    if gh > grid or gw > grid:
        raise ValueError(f"token grid {gh}x{gw} exceeds the model's {grid}x{grid} position table")
    r = torch.arange(gh).repeat_interleave(gw)
    c = torch.arange(gw).repeat(gh)
    return r * grid + c
