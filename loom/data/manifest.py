"""Random-access readers for training manifests: JSONL (image paths relative to the manifest's folder), parquet
(image bytes in the row) and Hugging Face `datasets` folders (`save_to_disk` output or a hub-style folder).

Every reader returns plain record dicts (the row schema of `data/README.md`) and resolves image references with
`load_image`, which accepts a relative path, raw bytes, a `{"bytes", "path"}` struct (parquet / HF Image
feature) or an already decoded PIL image. Decoding is forced (`Image.load()`), so a corrupt file fails here,
with its source, and not later inside packing.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from pathlib import Path
from typing import Any

from PIL import Image

FORMATS = ("jsonl", "parquet", "hf")
IMAGE_KEYS = ("frames", "input_images", "targets")  # row fields that hold image references


def detect_format(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir():
        if any(p.glob("*.parquet")) and not (p / "dataset_info.json").exists() and not (p / "state.json").exists():
            return "parquet"
        return "hf"
    if p.suffix in (".jsonl", ".json"):
        return "jsonl"
    if p.suffix == ".parquet":
        return "parquet"
    raise ValueError(f"{path}: cannot tell the manifest format from the name (use .jsonl, .parquet or a folder)")


class Manifest:
    """Rows of one manifest, by index. `source(i)` names a row in every log line and error."""

    def __init__(self, path: str | Path, format: str = "auto", split: str = "train") -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"manifest {self.path} does not exist")
        self.format = detect_format(self.path) if format == "auto" else format
        if self.format not in FORMATS:
            raise ValueError(f"unknown manifest format {format!r}; known: auto, {', '.join(FORMATS)}")
        self.base = self.path if self.path.is_dir() else self.path.parent
        if self.format == "jsonl":
            self._offsets = _line_offsets(self.path)
        elif self.format == "parquet":
            self._init_parquet()
        else:
            self._init_hf(split)

    # ---- readers -----------------------------------------------------------------------------------------
    def _init_parquet(self) -> None:
        import pyarrow.parquet as pq

        files = sorted(self.path.glob("*.parquet")) if self.path.is_dir() else [self.path]
        self._pq = [pq.ParquetFile(str(f)) for f in files]
        self._groups = []  # (file index, row group, first row, num rows)
        start = 0
        for fi, f in enumerate(self._pq):
            for g in range(f.num_row_groups):
                n = f.metadata.row_group(g).num_rows
                self._groups.append((fi, g, start, n))
                start += n
        self._num_rows = start
        self._cache: tuple[int, list[dict]] | None = None

    def _init_hf(self, split: str) -> None:
        import datasets

        try:
            ds = datasets.load_from_disk(str(self.path))
        except FileNotFoundError:
            ds = datasets.load_dataset(str(self.path), split=split)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise KeyError(f"{self.path}: split {split!r} not found (have {list(ds)})")
            ds = ds[split]
        self._ds = ds

    def __len__(self) -> int:
        if self.format == "jsonl":
            return len(self._offsets)
        if self.format == "parquet":
            return self._num_rows
        return len(self._ds)

    def source(self, i: int) -> str:
        return f"{self.path}:{i}"

    def row(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: row {i} out of range ({len(self)} rows)")
        if self.format == "jsonl":
            with open(self.path, "rb") as f:
                f.seek(self._offsets[i])
                line = f.readline()
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.source(i)}: invalid JSON ({e})") from None
        elif self.format == "parquet":
            rec = self._parquet_row(i)
        else:
            rec = dict(self._ds[i])
        if not isinstance(rec, dict):
            raise ValueError(f"{self.source(i)}: a row must be a JSON object, got {type(rec).__name__}")
        return rec

    def _parquet_row(self, i: int) -> dict[str, Any]:
        for k, (fi, g, start, n) in enumerate(self._groups):
            if start <= i < start + n:
                if self._cache is None or self._cache[0] != k:
                    self._cache = (k, self._pq[fi].read_row_group(g).to_pylist())
                return dict(self._cache[1][i - start])
        raise IndexError(i)

    def load_image(self, ref: Any) -> Image.Image:
        return load_image(ref, self.base)


def _line_offsets(path: Path) -> list[int]:
    """Byte offsets of the non-blank lines (rows are parsed lazily, so huge manifests stay cheap)."""
    offsets, pos = [], 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                offsets.append(pos)
            pos += len(line)
    return offsets


def load_image(ref: Any, base: str | Path = ".") -> Image.Image:
    """Decode one image reference (path relative to `base`, bytes, {"bytes"/"path"} struct or PIL image)."""
    if isinstance(ref, Image.Image):
        img = ref
    elif isinstance(ref, (bytes, bytearray)):
        img = Image.open(io.BytesIO(ref))
    elif isinstance(ref, dict):
        if ref.get("bytes") is not None:
            img = Image.open(io.BytesIO(ref["bytes"]))
        elif ref.get("path"):
            img = Image.open(Path(base) / ref["path"])
        else:
            raise ValueError(f"image struct without bytes or path: {sorted(ref)}")
    elif isinstance(ref, str):
        p = Path(ref)
        p = p if p.is_absolute() else Path(base) / p
        if not p.exists():
            raise FileNotFoundError(f"image {ref!r} not found (resolved to {p})")
        img = Image.open(p)
    else:
        raise TypeError(f"unsupported image reference of type {type(ref).__name__}")
    img.load()  # force the decode: corrupt files fail here
    return img


def image_refs(record: dict[str, Any]) -> list[Any]:
    """All image references of a row, in field order (frames, input_images, targets)."""
    out = []
    for k in IMAGE_KEYS:
        v = record.get(k) or []
        out += list(v) if isinstance(v, (list, tuple)) else [v]
    return out


# ---- training source -----------------------------------------------------------------------------------------

class ManifestSource:
    """A manifest read through `loom.data.manifest` and turned into plans by `loom.data.builders`."""

    def __init__(self, path: str | Path, format: str, split: str, tokenizer, tokens, build: dict[str, Any],
                 geometry=None, model_slots: tuple[int, int] | None = None) -> None:
        from .builders import BuildContext

        self.manifest = Manifest(path, format, split)
        self.ctx = BuildContext(tokenizer=tokenizer, tokens=tokens, config=build_config(build, model_slots),
                                load_image=self.manifest.load_image, manifest=str(path), geometry=geometry)

    def __len__(self) -> int:
        return len(self.manifest)

    def source(self, row: int) -> str:
        return self.manifest.source(row)

    def plans(self, row: int, rng: random.Random) -> list:
        from .builders import build_plans

        record = self.manifest.row(row)
        record["_row"] = row
        out = build_plans(record, self.ctx, rng)
        for p in out:
            p.source = p.source or self.source(row)
        return out


def build_config(values: dict[str, Any], model_slots: tuple[int, int] | None = None):
    """`BuildConfig` from `data.build` (strict: unknown keys are errors). The temporal-table sizes default to the
    model's (`LoomConfig.max_frames` / `max_references`), so the two cannot drift apart."""
    from ..config import ConfigError
    from .builders import BuildConfig

    fields = {f.name: f for f in dataclasses.fields(BuildConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"data.build: unknown BuildConfig fields {unknown}; known: {sorted(fields)}")
    kw = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()}
    if model_slots is not None:
        kw.setdefault("max_frames", model_slots[0])
        kw.setdefault("max_references", model_slots[1])
    return BuildConfig(**kw)
