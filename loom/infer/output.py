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
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from .pipeline import GenerationResult
from .storyboard import render_storyboard

RESULT_FORMAT = "loom.generate/1"


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
    """Refuse to clobber a finished result (call before generating, so nothing is computed in vain)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder")
    if (out / "result.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a finished result (result.json); pass --overwrite or choose "
                              "another --out")
    return out


def write_result(res: GenerationResult, out: str | Path, overwrite: bool = False) -> dict:
    """Write frames, inputs, result.json and index.html into `out` atomically. Returns the result dict."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


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
