"""Manifest folders: `manifest.jsonl` plus PNGs referenced by paths relative to the folder. Writes are atomic."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from loom.utils.io import atomic_write_bytes, atomic_write_jsonl

MANIFEST_NAME = "manifest.jsonl"


write_bytes_atomic = atomic_write_bytes  # temp file + rename: readers never see a half-written file


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: Path, image: np.ndarray) -> None:
    write_bytes_atomic(path, png_bytes(image))


def read_image(path: str | Path) -> np.ndarray:
    """H x W x 3 uint8, whatever mode the file was saved in."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_jsonl(path, rows)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def manifest_path(folder_or_file: str | Path) -> Path:
    """Accept either the folder or the manifest file itself."""
    p = Path(folder_or_file)
    return p / MANIFEST_NAME if p.is_dir() else p
