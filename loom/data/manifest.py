"""Random-access readers for training manifests: JSONL (image paths relative to the manifest's folder), parquet
(image bytes in the row) and Hugging Face `datasets` folders (`save_to_disk` output or a hub-style folder).

Every reader returns plain record dicts (the row schema of `data/README.md`) and resolves image references with
`load_image`, which accepts a relative path, raw bytes, a `{"bytes", "path"}` struct (parquet / HF Image
feature) or an already decoded PIL image. Decoding is forced (`Image.load()`), so a corrupt file fails here,
with its source, and not later inside packing.

Paths stay inside their data root: a relative path is resolved against the manifest's folder and must not leave
`root` (default: that folder; `../images/x.png` needs `root` one level up), absolute paths are refused unless
`allow_absolute_paths`. The check is lexical (no symlink resolution: a link the data owner placed is followed).
Rows are named `manifest:line:id` with 1-based lines (`loom.data.records.record_source`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
from pathlib import Path
from typing import Any

from PIL import Image

from .records import ImageError, SampleError, describe_ref

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

    def __init__(self, path: str | Path, format: str = "auto", split: str = "train", root: str | Path = "",
                 allow_absolute_paths: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"manifest {self.path} does not exist")
        self.format = detect_format(self.path) if format == "auto" else format
        if self.format not in FORMATS:
            raise ValueError(f"unknown manifest format {format!r}; known: auto, {', '.join(FORMATS)}")
        self.base = self.path if self.path.is_dir() else self.path.parent
        self.root = Path(root) if root else self.base
        self.allow_absolute_paths = allow_absolute_paths
        if self.format == "jsonl":
            self._offsets, self._lines = _line_offsets(self.path)
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

    def line(self, i: int) -> int:
        """1-based location of row i: its file line (JSONL, blank lines counted), else i + 1."""
        return self._lines[i] if self.format == "jsonl" else i + 1

    def source(self, i: int) -> str:
        return f"{self.path}:{self.line(i)}"

    def row(self, i: int) -> dict[str, Any]:
        """Row i (0-based) with `_row` = i and `_line` = `line(i)` added; a row that is not a JSON object raises
        `SampleError` (source and reason kept apart)."""
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: row {i} out of range ({len(self)} rows)")
        if self.format == "jsonl":
            with open(self.path, "rb") as f:
                f.seek(self._offsets[i])
                line = f.readline()
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                self._bad_row(i, f"invalid JSON ({e})")
        elif self.format == "parquet":
            rec = self._parquet_row(i)
        else:
            rec = dict(self._ds[i])
        if not isinstance(rec, dict):
            self._bad_row(i, f"a row must be a JSON object, got {type(rec).__name__}")
        rec["_row"], rec["_line"] = i, self.line(i)
        return rec

    def _bad_row(self, i: int, reason: str):
        raise SampleError(f"{self.source(i)}: {reason}", source=self.source(i), reason=reason)

    def _parquet_row(self, i: int) -> dict[str, Any]:
        for k, (fi, g, start, n) in enumerate(self._groups):
            if start <= i < start + n:
                if self._cache is None or self._cache[0] != k:
                    self._cache = (k, self._pq[fi].read_row_group(g).to_pylist())
                return dict(self._cache[1][i - start])
        raise IndexError(i)

    def load_image(self, ref: Any) -> Image.Image:
        return load_image(ref, self.base, self.root, self.allow_absolute_paths)


def _line_offsets(path: Path) -> tuple[list[int], list[int]]:
    """Byte offsets and 1-based line numbers of the non-blank lines (rows are parsed lazily, so huge manifests
    stay cheap)."""
    offsets, lines, pos = [], [], 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                offsets.append(pos)
                lines.append(n)
            pos += len(line)
    return offsets, lines


def resolve_path(ref: str, base: str | Path, root: str | Path | None = None,
                 allow_absolute_paths: bool = False) -> Path:
    """The file a path reference names: relative to `base`, inside `root` (default `base`); raises
    `ImageError` for an absolute path (unless allowed) or one that leaves the root."""
    p = Path(ref)
    if p.is_absolute():
        if not allow_absolute_paths:
            raise ImageError(f"image path {ref!r} is absolute; write it relative to the manifest's folder "
                             "(or set allow_absolute_paths=true on the source)")
        return p
    full = Path(os.path.normpath(Path(base) / p))
    top = Path(os.path.normpath(root if root is not None else base))
    if full != top and top not in full.parents:
        raise ImageError(f"image path {ref!r} leaves the data root {top} (resolves to {full}); keep images under "
                         "the root or set the source's root to a folder that contains them")
    return full


def load_image(ref: Any, base: str | Path = ".", root: str | Path | None = None,
               allow_absolute_paths: bool = False) -> Image.Image:
    """Decode one image reference (path relative to `base` and inside `root`, bytes, {"bytes"/"path"} struct
    or PIL image). Every way a file can be bad — missing, not an image, truncated, a decompression bomb —
    raises `ImageError` naming the reference."""
    if isinstance(ref, Image.Image):
        return ref
    if isinstance(ref, dict) and ref.get("bytes") is None:
        if not ref.get("path"):
            raise ImageError(f"image struct without bytes or path: {sorted(ref)}")
        ref = ref["path"]
    if isinstance(ref, dict):
        src: Any = io.BytesIO(ref["bytes"])
    elif isinstance(ref, (bytes, bytearray)):
        src = io.BytesIO(ref)
    elif isinstance(ref, str):
        src = resolve_path(ref, base, root, allow_absolute_paths)
        if not src.is_file():
            raise ImageError(f"image {ref!r} not found (resolved to {src})")
    else:
        raise TypeError(f"unsupported image reference of type {type(ref).__name__}")
    try:
        img = Image.open(src)
        img.load()  # force the decode: corrupt files fail here
    except Exception as e:  # PIL reports bad bytes as OSError, SyntaxError, DecompressionBombError, EOFError …
        raise ImageError(f"image {describe_ref(ref)} cannot be decoded: {type(e).__name__}: {e}") from e
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
                 geometry=None, model_slots: tuple[int, int] | None = None, root: str | Path = "",
                 allow_absolute_paths: bool = False) -> None:
        from .builders import BuildContext

        self.manifest = Manifest(path, format, split, root, allow_absolute_paths)
        self.ctx = BuildContext(tokenizer=tokenizer, tokens=tokens, config=build_config(build, model_slots),
                                load_image=self.manifest.load_image, manifest=str(path), geometry=geometry)

    def __len__(self) -> int:
        return len(self.manifest)

    def source(self, row: int) -> str:
        return self.manifest.source(row)

    def plans(self, row: int, rng: random.Random) -> list:
        """Every instance of one row. A data failure raises `SampleError` whose `.source` is `manifest:line:id`
        (the id is known once the row parsed), so the loader's skip record names the row exactly."""
        from .builders import build_plans
        from .records import DATA_ERRORS, record_source

        record = self.manifest.row(row)
        src = record_source(record, self.ctx.manifest)
        try:
            out = build_plans(record, self.ctx, rng)
        except DATA_ERRORS as e:
            reason = str(e)[len(src):].lstrip(": ") if str(e).startswith(src) else f"{type(e).__name__}: {e}"
            raise SampleError(f"{src}: {reason}", source=src, reason=reason) from e
        for p in out:
            p.source = p.source or src
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
