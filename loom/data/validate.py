"""Whole-dataset validation before training (`loom data validate MANIFEST`).

One pass over every row: schema checks (`records.check_record`: unknown task, more steps than images, plan
unparsable, placeholders without images, too many references, non-string ids …), duplicate ids, every image
decoded and inside the data root (`loom.data.manifest.resolve_path`), and — given a tokenizer — every training
instance actually built and measured, so a sample that would fail or overflow the token budget mid-run is named
now. Each issue carries the sample source `manifest:line:id` (1-based line).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .builders import BuildConfig, BuildContext, build_plans, plan_num_tokens
from .packing import PackGeometry
from .records import ImageError, SampleError, check_record, describe_ref, record_source
from .tokenizer import SpecialTokens


@dataclass
class Issue:
    source: str
    message: str
    level: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.level}: {self.source}: {self.message}"


@dataclass
class ValidationReport:
    manifest: str
    num_records: int = 0  # rows read
    num_ok: int = 0  # rows without errors (num_records − num_ok rows have one or more errors)
    num_instances: int = 0  # sequence plans built (tutorials: one per frame)
    tasks: Counter = field(default_factory=Counter)
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    max_tokens: int = 0  # longest instance (nothing dropped), 0 when not built
    total_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, max_issues: int = 20) -> str:
        mean = self.total_tokens / self.num_instances if self.num_instances else 0
        tasks = ", ".join(f"{k} {v}" for k, v in sorted(self.tasks.items()))
        lines = [f"{self.manifest}: {self.num_records} rows ({tasks}): {self.num_ok} ok, "
                 f"{self.num_records - self.num_ok} with errors; issues: {len(self.errors)} errors, "
                 f"{len(self.warnings)} warnings"]
        if self.num_instances:
            lines.append(f"  {self.num_instances} instances, tokens max {self.max_tokens}, mean {mean:.0f}")
        for issue in (self.errors + self.warnings)[:max_issues]:
            lines.append(f"  {issue}")
        extra = len(self.errors) + len(self.warnings) - max_issues
        if extra > 0:
            lines.append(f"  … {extra} more")
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        if self.errors:
            raise SampleError(self.summary())

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "num_records": self.num_records, "num_ok": self.num_ok,
                "num_rows_with_errors": self.num_records - self.num_ok, "num_instances": self.num_instances, "tasks": dict(self.tasks), "max_tokens": self.max_tokens,
                "errors": [vars(i) for i in self.errors], "warnings": [vars(i) for i in self.warnings]}


def validate_manifest(path: str | Path, tokenizer=None, config: BuildConfig | None = None,
                      geometry: PackGeometry | None = None, max_tokens_per_sample: int | None = None,
                      limit: int | None = None, seed: int = 0, format: str = "auto", root: str | Path = "",
                      allow_absolute_paths: bool = False) -> ValidationReport:
    """Check every row of a manifest (.jsonl / .parquet / HF folder). Without a tokenizer only the schema and
    the images are checked; with one, every instance is built and its length measured against
    `max_tokens_per_sample` (default `config.max_tokens_per_sample`). `root` / `allow_absolute_paths`: the
    data root image paths must stay in (default: the manifest's folder), as in `SourceConfig`."""
    from .manifest import Manifest  # the training reader: same row indexing, same image-reference forms

    config = config or BuildConfig()
    geometry = geometry or PackGeometry()
    cap = max_tokens_per_sample if max_tokens_per_sample is not None else config.max_tokens_per_sample
    man = Manifest(path, format, root=root, allow_absolute_paths=allow_absolute_paths)
    seen: dict[str, str] = {}  # id → source of its first row
    report = ValidationReport(str(path))
    registered: set[str] = set()
    ctx = None
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        registered = {t for t in config.entity_tokens if t in vocab}
        tokens = SpecialTokens.from_tokenizer(tokenizer)
        ctx = BuildContext(tokenizer, tokens, config, man.load_image, str(path), geometry)
    n = len(man) if limit is None else min(limit, len(man))
    for i in range(n):
        report.num_records += 1
        try:
            record = man.row(i)
        except SampleError as e:
            report.errors.append(Issue(e.source, e.reason))
            continue
        src = record_source(record, str(path))
        report.tasks[str(record.get("task"))] += 1
        errors, warnings = check_record(record, config.n_max, config.max_frames, config.max_references,
                                        config.entity_tokens)
        rid = record.get("id")
        if isinstance(rid, str) and rid:
            if rid in seen:
                errors.append(f"duplicate id {rid!r} (first used at {seen[rid]})")
            else:
                seen[rid] = src
        if tokenizer is not None:
            used = {t for t in config.entity_tokens if t in str(record.get("prompt", ""))}
            for t in sorted(used - registered):
                warnings.append(f"entity token {t} is not registered in the tokenizer (add_entity_tokens)")
        errors += _check_images(man, record)
        if not errors and ctx is not None:
            errors += _check_build(ctx, record, seed, cap, geometry, report)
        report.errors += [Issue(src, m) for m in errors]
        report.warnings += [Issue(src, m, "warning") for m in warnings]
        report.num_ok += not errors
    return report


def _check_images(man, record: dict) -> list[str]:
    out = []
    for key in ("input_images", "frames", "targets"):
        refs = record.get(key) or []
        for j, ref in enumerate(refs if isinstance(refs, list) else []):
            try:
                man.load_image(ref)
            except ImageError as e:  # names the reference itself
                out.append(f"{key}[{j}]: {e}")
            except Exception as e:  # any other failure is still a data error of this row
                out.append(f"{key}[{j}] {describe_ref(ref)}: {type(e).__name__}: {e}")
    return out


def _check_build(ctx: BuildContext, record: dict, seed: int, cap: int | None, geometry: PackGeometry,
                 report: ValidationReport) -> list[str]:
    src = record_source(record, ctx.manifest)
    try:
        plans = build_plans(record, ctx, random.Random(seed))
    except SampleError as e:  # the builders' message starts with the row's source: print it once
        msg = str(e)
        return [msg[len(src):].lstrip(": ") if msg.startswith(src) else msg]
    except Exception as e:  # a builder crash is reported against the row, never aborts the pass
        return [f"building failed: {type(e).__name__}: {e}"]
    out = []
    for p in plans:
        n = plan_num_tokens(p, geometry)
        report.num_instances += 1
        report.total_tokens += n
        report.max_tokens = max(report.max_tokens, n)
        if cap is not None and n > cap:
            out.append(f"{p.source.rsplit('#', 1)[-1] if '#' in p.source else 'sample'} has {n} tokens "
                       f"> max_tokens_per_sample = {cap}")
    return out
