"""Writing one generation: numbered frame PNGs, `result.json` and an `index.html` storyboard, atomically.

Layout of an output folder:

    frame_01.png … frame_NN.png   one per plan step (tutorial) / output (compose, style, decompose, t2i, edit)
    inputs/input_01.png …          the conditioning images (copied unless they already live in inputs/)
    result.json                    prompt, plan, steps [{index, text, image, history, seed, seconds}], seeds,
                                   settings, timings, plan source … (`RESULT_FORMAT`); written LAST
    index.html                     the storyboard a person reads (`loom.infer.storyboard`: plan beside the frames)
    entity_mask_NN.png             with localised entity CFG: the token mask used for frame NN (white = s_entity)

Everything is written to a hidden temp folder next to the target and moved in at the end, result.json last, so
a crash never leaves a half-written item that looks finished (`loom.eval` and `--batch` resume on result.json).
`check_output_dir` refuses an unwritable target before anything is generated; if writing still fails late (disk
full, permissions changed), or Ctrl-C hits the write, the finished files are kept in `<out>.partial/` and the
exception says so (`e.partial_output`). An interrupted generation is written there too (`"status":
"interrupted"` in its result.json). New folders get the usual umask permissions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import torch
from PIL import Image

from .loop import InputError
from .pipeline import GenerationResult
from .storyboard import render_storyboard

RESULT_FORMAT = "loom.generate/1"


class OutputError(InputError):
    """--out cannot be used (not a folder, not writable, or holds a finished result): found before generating."""


def partial_dir(out: str | Path) -> Path:
    """Where finished frames go when the item cannot be completed in `out` (interrupt, late write failure)."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def frame_name(k: int) -> str:
    return f"frame_{k:02d}.png"


def entity_mask_name(k: int) -> str:
    return f"entity_mask_{k:02d}.png"


def entity_mask_image(frame) -> Image.Image | None:
    """The frame's entity token mask at the frame's pixel size (nearest), white = inside; None without one."""
    ent = frame.entity
    m = None if ent is None else ent.used_mask
    if m is None:
        return None
    im = frame.image
    px = _token_px(frame)
    h, w = im.height // px, im.width // px
    arr = (m.reshape(h, w).float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(arr, mode="L").resize((im.width, im.height), Image.NEAREST)


def _token_px(frame) -> int:
    """Pixels per latent token side, from the frame's size and token count (square tokens)."""
    n, im = frame.tokens.shape[0], frame.image
    return int(round((im.width * im.height / n) ** 0.5))


def entity_summary(frames) -> dict | None:
    """result.json's "entity_cfg": mask source(s) and coverage (fraction of latent tokens inside the mask)."""
    reps = [f.entity.report() for f in frames if f.entity is not None]
    if not reps:
        return None
    cov = [r["coverage"] for r in reps if r["coverage"] is not None]
    sources = sorted({r["mask_source"] for r in reps})
    return {"mask_source": sources[0] if len(sources) == 1 else sources,
            "coverage": round(sum(cov) / len(cov), 6) if cov else None,
            "frames_with_entity_cfg": len(reps), "frames": len(frames)}


def result_dict(res: GenerationResult, input_rels: list[str]) -> dict:
    s = res.settings
    plan_steps = res.plan.steps if res.plan else []
    steps = [{"index": f.index, "text": f.text, "image": frame_name(f.index), "history": list(f.history),
              "seed": f.seed, "seconds": round(f.seconds, 4), "context_tokens": f.num_context_tokens}
             for f in res.frames]
    for st, f in zip(steps, res.frames):
        if f.entity is not None:
            st["entity_cfg"] = f.entity.report()
            if f.entity.used_mask is not None:
                st["entity_cfg"]["mask_image"] = entity_mask_name(f.index)
    d = {
        "format": RESULT_FORMAT,
        "task": res.task,
        "prompt": res.prompt,
        "plan": list(plan_steps),
        "steps": steps,
        "inputs": input_rels,
        "text_source": "model" if (res.plan is None or res.plan.source == "model") else "given",
        "status": "interrupted" if res.interrupted else "complete",
    }
    if res.plan is not None:
        d.update(res.plan.to_json())
    if res.answer is not None:
        d["answer"] = res.answer
    d["seeds"] = {"base": s.seed, "frames": [f.seed for f in res.frames]}
    if res.plan is not None and res.plan.source == "model":
        from .loop import frame_seed

        d["seeds"]["plan"] = frame_seed(s.seed, 0)
    settings = s.to_json()
    if res.frames:
        im = res.frames[0].image
        settings["output_size"] = [im.width, im.height]
    if res.k_max is not None:
        settings["k_max"] = res.k_max
    d["settings"] = settings
    timings = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.timings.items()}
    if res.stats is not None:
        st = res.stats
        timings["frame_seconds"] = [round(x, 4) for x in st.frame_seconds]
        timings["prefill_seconds"] = round(st.prefill_seconds, 4)
        n_denoise_steps = max(1, (s.num_timesteps - 1) * len(res.frames))
        d["forwards"] = {"prefill": st.num_forwards_prefill, "denoise": st.num_forwards_denoise,
                         "per_denoising_step": st.num_forwards_denoise / n_denoise_steps if res.frames else 0}
    d["timings"] = timings
    d["model"] = res.model
    ent = entity_summary(res.frames)
    if ent is not None:
        d["entity_cfg"] = ent
    if res.notes:
        d["notes"] = list(res.notes)
    d["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return d


def _write_json(path: Path, d: dict) -> None:
    path.write_text(json.dumps(d, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def check_output_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse to clobber a finished result and make sure `out` can be written — call before generating, so
    nothing is computed in vain."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    if (out / "result.json").exists() and not overwrite:
        raise OutputError(f"{out} already holds a finished result (result.json); pass --overwrite or choose "
                          "another --out")
    check_writable(out)
    return out


def check_writable(folder: str | Path) -> None:
    """`folder` — or its nearest existing ancestor, where it would be created — accepts new entries. A probe
    folder is made and removed: os.access alone misses read-only mounts (and is always true for root)."""
    folder = Path(folder)
    anc = folder
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"cannot create --out {folder}: {anc} is a file, not a folder")
    try:
        _new_dir(anc, ".loom-write-test-").rmdir()
    except OSError as e:
        raise OutputError(f"cannot write to --out {folder}: {anc} is not writable ({e.strerror or e})") from None


def _new_dir(parent: Path, prefix: str) -> Path:
    """A fresh folder with the umask's permissions (tempfile.mkdtemp would make it 0700 for good)."""
    p = parent / f"{prefix}{uuid.uuid4().hex[:8]}"
    p.mkdir()
    return p


def write_result(res: GenerationResult, out: str | Path, overwrite: bool = False) -> dict:
    """Write frames, inputs, result.json and index.html into `out` atomically. Returns the result dict. On a
    failure or an interrupt after the files were made, they are kept in `partial_dir(out)` (or, if even that
    rename fails, in the temp folder) and the exception carries that path as `partial_output`."""
    out = check_output_dir(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_dir(out.parent, f".{out.name}.tmp-")
    except OSError:  # the target went away since the check: build the files where they can be kept
        tmp = _new_dir(Path(tempfile.gettempdir()), f".loom-{out.name}.tmp-")
    try:
        input_rels = []
        for k, im in enumerate(res.inputs, 1):
            src = Path(res.input_paths[k - 1]).resolve() if k <= len(res.input_paths) else None
            inside = src is not None and out.resolve() in src.parents
            if inside:
                input_rels.append(src.relative_to(out.resolve()).as_posix())
                continue
            rel = f"inputs/input_{k:02d}.png"
            (tmp / "inputs").mkdir(exist_ok=True)
            im.save(tmp / rel)
            input_rels.append(rel)
        for f in res.frames:
            f.image.save(tmp / frame_name(f.index))
            mask = entity_mask_image(f)
            if mask is not None:
                mask.save(tmp / entity_mask_name(f.index))
        d = result_dict(res, input_rels)
        (tmp / "index.html").write_text(render_storyboard(d, tmp), encoding="utf-8")
        _write_json(tmp / "result.json", d)
        _commit(tmp, out)
    except BaseException as e:
        kept = _keep_partial(tmp, out)
        if kept is not None:
            e.partial_output = kept
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def _keep_partial(tmp: Path, out: Path) -> Path | None:
    """Move whatever frames `tmp` holds to `<out>.partial` (replacing an older one); None if it holds none."""
    if not tmp.is_dir() or not any(tmp.glob("frame_*.png")):
        return None
    dst = partial_dir(out)
    try:
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
        return dst
    except OSError:
        keep = tmp.with_name(tmp.name.lstrip(".") + ".partial")
        try:
            os.replace(tmp, keep)
            return keep
        except OSError:
            return None


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished folder into place: one rename when `out` is new, else file by file, result.json last."""
    if not out.exists():
        os.replace(tmp, out)
        return
    (out / "result.json").unlink(missing_ok=True)  # the old result stops counting as finished first
    for stale in [*out.glob("frame_*.png"), *out.glob("entity_mask_*.png")]:
        if not (tmp / stale.name).exists():
            stale.unlink()
    files = sorted((p for p in tmp.rglob("*") if p.is_file()), key=lambda p: p.name == "result.json")
    for p in files:
        dst = out / p.relative_to(tmp)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, dst)
