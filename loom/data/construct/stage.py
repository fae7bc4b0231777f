"""The runner every `loom data` construction stage shares: resumable, sharded over processes, with a progress bar
and a funnel report of how many items each filter removed and why.

A stage maps work items (a video, a manifest row, a subject combination, …) to an `Outcome`: the manifest rows it
produced, or a rejection with a named reason (one of the stage's funnel steps) and a detail. Outcomes are journaled
as they finish (`loom.utils.journal`), so an interrupt, a crash or a fatal endpoint error loses nothing; rerunning
the same command continues where it stopped. Transient failures (an endpoint still failing after its retries) and
unexpected exceptions are *pending*: reported, never journaled as final, redone by the next run; past
`max_errors` unexpected exceptions the stage stops with a one-line error. `shard=(k, n)` processes items
k, k+n, k+2n, … so several machines or processes can share a stage; the run that finds every item finished
writes the output. The work folder records the stage settings; rerunning with different settings is refused
unless `--restart` discards the journal.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from loom.utils.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from loom.utils.journal import Journal


class StageError(RuntimeError):
    """A stage cannot go on (bad input, settings changed, too many errors); the message names the fix."""


@dataclass
class Outcome:
    rows: list[dict] = field(default_factory=list)  # manifest rows produced by this item
    reason: str | None = None  # funnel step that removed it (None when kept)
    detail: str = ""
    pending: bool = False  # not final: redone by the next run (endpoint unavailable, unexpected error)
    counts: dict[str, int] = field(default_factory=dict)  # informational counters, summed in the report

    @classmethod
    def keep(cls, rows: list[dict], **counts: int) -> Outcome:
        return cls(rows=rows, counts=counts)

    @classmethod
    def reject(cls, reason: str, detail: str = "", **counts: int) -> Outcome:
        return cls(reason=reason, detail=detail, counts=counts)

    @classmethod
    def retry_later(cls, reason: str, detail: str = "") -> Outcome:
        return cls(reason=reason, detail=detail, pending=True)


@dataclass
class Stage:
    name: str  # "frames", "caption", …
    steps: tuple[str, ...]  # rejection reasons in funnel order
    process: Callable[[Any], Outcome]  # picklable (module-level function or functools.partial of one)
    init: Callable[[], None] | None = None  # per-worker setup (load CLIP once, build the API client)
    executor: str = "process"  # "process" for CPU work, "thread" for endpoint calls
    fatal: tuple[type[BaseException], ...] = ()  # exceptions that stop the stage (an endpoint refusing every call)


@dataclass
class StageRun:
    outcomes: dict[str, Outcome]  # every finished item (this run and earlier ones)
    pending: dict[str, Outcome]  # items of this run's shard that must be redone
    complete: bool  # every item of every shard is finished: the output can be written


def file_digest(path: Path) -> str:
    """sha256 of an input manifest, recorded in the stage settings so an edited input is never resumed stale."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def out_base(output: Path, *inputs: Path) -> Path:
    """The output manifest's folder, refusing outputs from which an input's images would escape it (loom resolves
    image paths inside the manifest's folder, `loom data validate`)."""
    base = output.parent.resolve()
    for p in inputs:
        if not p.resolve().is_relative_to(base):
            raise StageError(f"--out {output}: write the manifest in {p.parent} or a folder above it, so the image "
                             f"paths from {p} stay inside the manifest's folder")
    return base


def work_dir_for(output: Path) -> Path:
    return output / ".work" if output.suffix == "" else output.with_name(output.name + ".work")


def _check_settings(work: Path, settings: dict[str, Any], restart: bool) -> None:
    path = work / "settings.json"
    if restart and work.exists():
        for j in work.glob("journal-*.jsonl"):
            j.unlink()
    if path.is_file() and not restart:
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(settings, default=str)):
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise StageError(f"{work}: settings changed since this work was journaled ({', '.join(changed)}); "
                             "rerun with the same settings to continue, or pass --restart to discard it")
    atomic_write_json(path, json.loads(json.dumps(settings, default=str)))


def _safe(process: Callable[[Any], Outcome], payload: Any, fatal: tuple[type[BaseException], ...] = ()) -> Outcome:
    try:
        return process(payload)
    except fatal:
        raise
    except Exception as e:  # an unexpected failure is counted and redone next run, never silently dropped
        return Outcome.retry_later("error", f"{type(e).__name__}: {e}")


def _init_worker(init: Callable[[], None] | None) -> None:
    if init is not None:
        init()


def run_stage(stage: Stage, items: list[tuple[str, Any]], work: Path, settings: dict[str, Any], *,
              workers: int = 1, shard: tuple[int, int] = (0, 1), progress: bool = True, max_errors: int = 20,
              restart: bool = False) -> StageRun:
    k, n = shard
    if not 0 <= k < n:
        raise StageError(f"--shard {k}/{n}: expected K/N with 0 <= K < N")
    keys = [key for key, _ in items]
    dups = [key for key, c in Counter(keys).items() if c > 1]
    if dups:
        raise StageError(f"two inputs map to the same item id {dups[0]!r}; rename one of them")
    work.mkdir(parents=True, exist_ok=True)
    _check_settings(work, settings, restart)
    outcomes: dict[str, Outcome] = {}
    for j in sorted(work.glob("journal-*.jsonl")):
        outcomes.update({key: Outcome(**rec) for key, rec in Journal(j).load().items()})
    journal = Journal(work / f"journal-{k}of{n}.jsonl")
    todo = [(key, p) for i, (key, p) in enumerate(items) if i % n == k and key not in outcomes]
    pending: dict[str, Outcome] = {}
    bar = tqdm(total=len(todo), desc=stage.name, unit="item", disable=None if progress else True, file=sys.stderr)

    def finish(key: str, out: Outcome) -> None:
        bar.update(1)
        if out.pending:
            pending[key] = out
            errors = [x for x in pending.values() if x.reason == "error"]
            if len(errors) > max_errors:
                first = next(kk for kk, x in pending.items() if x.reason == "error")
                raise StageError(f"{stage.name}: {len(errors)} items failed with unexpected errors, more than "
                                 f"--max-errors {max_errors} (first: {first}: {pending[first].detail}); "
                                 f"finished items are journaled in {work}")
        else:
            outcomes[key] = out
            journal.append(key, asdict(out))

    try:
        if workers <= 1 or len(todo) <= 1:
            _init_worker(stage.init)
            for key, payload in todo:
                finish(key, _safe(stage.process, payload, stage.fatal))
        else:
            _run_pool(stage, todo, workers, finish)
    except KeyboardInterrupt:
        bar.close()
        raise StageError(f"{stage.name}: interrupted; {len(outcomes)} finished items are journaled in {work}; "
                         "rerun the same command to continue") from None
    finally:
        bar.close()
    complete = not pending and all(key in outcomes for key in keys)
    return StageRun(outcomes, pending, complete)


def _run_pool(stage: Stage, todo: list[tuple[str, Any]], workers: int,
              finish: Callable[[str, Outcome], None]) -> None:
    pool: Executor
    if stage.executor == "thread":
        _init_worker(stage.init)
        pool = ThreadPoolExecutor(max_workers=workers)
    else:  # spawn: torch and the OpenMP pools it starts are not fork-safe
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(stage.init,))
    try:
        queue = iter(todo)
        running: dict[Any, str] = {}
        for key, payload in queue:  # keep at most 2 × workers in flight so an interrupt loses little
            running[pool.submit(_safe, stage.process, payload, stage.fatal)] = key
            if len(running) >= 2 * workers:
                break
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                finish(running.pop(f), f.result())
                nxt = next(queue, None)
                if nxt is not None:
                    running[pool.submit(_safe, stage.process, nxt[1], stage.fatal)] = nxt[0]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---- funnel report -------------------------------------------------------------------------------------------

@dataclass
class Funnel:
    stage: str
    steps: tuple[str, ...]
    inputs: list[str]
    output: str
    num_in: int = 0
    num_out: int = 0  # items kept
    num_rows: int = 0  # manifest rows written (an item may give several, e.g. compose + decompose)
    removed: list[dict] = field(default_factory=list)  # {"key", "reason", "detail"}
    pending: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    settings: dict[str, Any] = field(default_factory=dict)
    rejected_inputs: list[dict] = field(default_factory=list)  # inputs dropped before items were formed

    def table(self) -> list[dict[str, Any]]:
        by = Counter(r["reason"] for r in self.removed)
        order = list(self.steps) + sorted(set(by) - set(self.steps))
        rows, left = [], self.num_in
        for step in order:
            left -= by.get(step, 0)
            rows.append({"step": step, "removed": by.get(step, 0), "remaining": left})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "inputs": self.inputs, "output": self.output, "num_in": self.num_in,
                "num_out": self.num_out, "num_rows": self.num_rows, "num_pending": len(self.pending),
                "funnel": self.table(), "counts": dict(sorted(self.counts.items())), "removed": self.removed,
                "pending": self.pending, "rejected_inputs": self.rejected_inputs, "settings": self.settings}

    def markdown(self, max_items: int = 50) -> str:
        lines = [f"# `loom data {self.stage}` funnel", "", f"- inputs: {', '.join(self.inputs)}",
                 f"- output: {self.output}", f"- {self.num_in} in, {self.num_out} kept, {len(self.removed)} "
                 f"removed, {len(self.pending)} pending; {self.num_rows} manifest rows", "",
                 "| step | removed | remaining |", "|---|---:|---:|", f"| input | | {self.num_in} |"]
        lines += [f"| {r['step']} | {r['removed']} | {r['remaining']} |" for r in self.table()]
        if self.pending:
            lines += ["", f"**{len(self.pending)} pending** (not final; rerun the same command to retry them):", ""]
            lines += [f"- `{p['key']}`: {p['reason']}: {p['detail']}" for p in self.pending[:max_items]]
        if self.rejected_inputs:
            lines += ["", f"**{len(self.rejected_inputs)} inputs not used:**", ""]
            lines += [f"- `{r['path']}`: {r['reason']} ({r['detail']})" for r in self.rejected_inputs[:max_items]]
        if self.counts:
            lines += ["", "| counter | value |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in sorted(self.counts.items())]
        if self.removed:
            lines += ["", "## Removed items", ""]
            lines += [f"- `{r['key']}`: {r['reason']}" + (f" ({r['detail']})" if r["detail"] else "")
                      for r in self.removed[:max_items]]
            if len(self.removed) > max_items:
                lines.append(f"- … {len(self.removed) - max_items} more in the JSON report")
        return "\n".join(lines) + "\n"

    def write(self, base: Path) -> tuple[Path, Path]:
        """`<base>.funnel.json` and `<base>.funnel.md`."""
        j, m = base.with_name(base.name + ".funnel.json"), base.with_name(base.name + ".funnel.md")
        atomic_write_json(j, self.to_dict())
        atomic_write_text(m, self.markdown())
        return j, m


def collect(stage: Stage, items: list[tuple[str, Any]], run: StageRun, inputs: list[str], output: Path,
            settings: dict[str, Any]) -> tuple[list[dict], Funnel]:
    """Rows of the kept items in input order, and the funnel of the whole stage."""
    funnel = Funnel(stage.name, stage.steps, inputs, str(output), num_in=len(items), settings=settings)
    rows: list[dict] = []
    for key, _ in items:
        out = run.outcomes.get(key) or run.pending.get(key)
        if out is None:
            continue
        funnel.counts.update(out.counts)
        if out.pending:
            funnel.pending.append({"key": key, "reason": out.reason, "detail": out.detail})
        elif out.reason is not None:
            funnel.removed.append({"key": key, "reason": out.reason, "detail": out.detail})
        else:
            funnel.num_out += 1
            rows += out.rows
    funnel.num_rows = len(rows)
    return rows, funnel


def finish_stage(stage: Stage, items: list[tuple[str, Any]], run: StageRun, inputs: list[str], output: Path,
                 settings: dict[str, Any], shard: tuple[int, int] = (0, 1),
                 post: Callable[[list[dict], Funnel], list[dict]] | None = None,
                 rejected_inputs: list[dict] | None = None) -> int:
    """Write the manifest and the funnel report once every item is finished; print where they are. Exit status:
    0 done, 1 some items pending (rerun to retry them), 0 with a note for a finished shard of a larger job."""
    rows, funnel = collect(stage, items, run, inputs, output, settings)
    funnel.rejected_inputs = list(rejected_inputs or [])
    if not run.complete and not run.pending:
        done = sum(1 for key, _ in items if key in run.outcomes)
        print(f"{stage.name}: shard {shard[0]}/{shard[1]} finished; {done} of {len(items)} items done over all "
              "shards. Run the remaining shards (or the command without --shard) to write the output.")
        return 0
    if post is not None:
        rows = post(rows, funnel)
        funnel.num_rows = len(rows)
    atomic_write_jsonl(output, rows)
    j, m = funnel.write(output)
    unused = f", {len(funnel.rejected_inputs)} inputs unusable" if funnel.rejected_inputs else ""
    print(f"{stage.name}: {funnel.num_in} in, {funnel.num_out} kept, {len(funnel.removed)} removed, "
          f"{len(funnel.pending)} pending{unused} → {output} ({funnel.num_rows} rows); report {m}")
    if funnel.pending:
        print(f"{stage.name}: {len(funnel.pending)} items are pending ({funnel.pending[0]['reason']}: "
              f"{funnel.pending[0]['detail']}); rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def need(module: str) -> Any:
    """Import an optional dependency of dataset construction, or stop with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        pkg = {"av": "PyAV (av)", "imagehash": "imagehash"}.get(module, module)
        raise StageError(f"dataset construction needs {pkg}: pip install 'loom[data]'") from None


def run_kwargs(args) -> dict[str, Any]:
    k, sep, n = str(args.shard).partition("/")
    if not sep or not k.isdigit() or not n.isdigit():
        raise StageError(f"--shard {args.shard!r}: expected K/N, e.g. 0/4")
    return {"workers": args.workers, "shard": (int(k), int(n)), "progress": not args.no_progress,
            "max_errors": args.max_errors, "restart": args.restart}
