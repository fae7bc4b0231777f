"""Image encoding for judge requests: resizing rules and base64 data URLs.

Two preprocessing policies exist because two protocols are reproduced: ours (long side ≤ 1024, PNG, eval-protocols
§1) and the official OmniContext scorer's (input images capped at 1024² area and floored to multiples of 16, all
images re-encoded as default-quality JPEG; `omnicontext/test_omnicontext_score.py`).
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

from PIL import Image, ImageOps

from loom.eval.fsio import EvalInputError


def open_rgb(path: Path | str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError) as e:
        raise EvalInputError(f"cannot read image {path}: {e}; regenerate it or remove the item") from e


def resize_long_side(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale (never upscale) so that max(w, h) ≤ max_side; judges bill per tile, so huge frames cost money."""
    w, h = image.size
    if max(w, h) <= max_side:
        return image
    s = max_side / max(w, h)
    return image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


def encode_data_url(image: Image.Image, fmt: str = "PNG", quality: int | None = None) -> str:
    """Base64 data URL. `quality=None` keeps PIL's default (75 for JPEG), which is what the official scorer used."""
    buf = io.BytesIO()
    kwargs = {} if quality is None else {"quality": quality}
    image.save(buf, format=fmt, **kwargs)
    mime = "image/png" if fmt.upper() == "PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def judge_image_url(path: Path | str, max_side: int = 1024, fmt: str = "PNG") -> str:
    return encode_data_url(resize_long_side(open_rgb(path), max_side), fmt=fmt)


def omnicontext_input_size(size: tuple[int, int]) -> tuple[int, int]:
    """Official rule for *input* images: cap the area at 1024², then floor both sides to multiples of 16."""
    w, h = size
    if w * h > 1024 * 1024:
        r = math.sqrt(1024 * 1024 / (w * h))
        w, h = int(w * r), int(h * r)
    return (w // 16 * 16, h // 16 * 16)


def omnicontext_image_url(image: Image.Image, is_input: bool) -> str:
    """Reproduce the official pipeline: resize inputs (PIL default filter), exif-transpose, RGB, JPEG q=75."""
    if is_input:
        image = image.resize(omnicontext_input_size(image.size))
    image = ImageOps.exif_transpose(image).convert("RGB")
    return encode_data_url(image, fmt="JPEG")
