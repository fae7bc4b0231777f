"""`loom data destylize`: (style, content, output) style-transfer triplets from stylised references (paper §3.4
"Style Transfer Pairs", Fig. 3c: Promptsref references, de-stylised by an image-edit model into realistic content).

Input: `STYLES/<style>/<image>` — several references per style (a Promptsref sref code), optional `<image>.txt`
with the image's prompt. For each stylised reference S the image-edit endpoint renders its photorealistic content
C; the row is "Apply the <style> of <image 1> to <image 2>." with input_images = [R, C] and target S, where R is
the *next* reference of the same style (so the model must transfer the style, not copy the reference). Rejections:
`single_image_style` (a style with one reference has no other reference to take the style from),
`image_refused` (HTTP 400/413/422 for this image), `destylize_unchanged` (the endpoint returned the reference
itself: nothing to learn). An endpoint that keeps failing leaves the item pending (rerun to retry it).
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import Any

from PIL import Image

from loom.utils.io import atomic_write_bytes
from loom.utils.openai_client import CallFailed, EndpointError

from . import endpoint
from .hashing import distance, phash
from .prompts import DESTYLIZE_PROMPT, STYLE_PROMPT
from .sources import description, grouped_images
from .stage import Outcome, Stage

STEPS = ("single_image_style", "image_refused", "destylize_unchanged")


def process_image(cfg: dict[str, Any], item: dict[str, Any]) -> Outcome:
    if item["reference"] is None:
        return Outcome.reject("single_image_style", f"style {item['style']!r} has one reference image")
    out_base, target = Path(item["out_base"]), Path(item["path"])
    prompt = DESTYLIZE_PROMPT + (f" The scene: {item['description']}" if item["description"] else "")
    try:
        raw = endpoint.client("image").edit_image([target.read_bytes()], prompt, cfg["size"])
    except CallFailed as e:
        if e.kind == "refused":
            return Outcome.reject("image_refused", str(e))
        return Outcome.retry_later("image_endpoint_unavailable", str(e))
    content = Image.open(io.BytesIO(raw)).convert("RGB")
    with Image.open(target) as im:
        d = distance(phash(content), phash(im))
    if d <= cfg["dup_distance"]:
        return Outcome.reject("destylize_unchanged", f"content differs from the reference by {d} bits")
    rel_content = f"content/{item['style']}/{target.stem}.png"
    buf = io.BytesIO()
    content.save(buf, format="PNG")
    atomic_write_bytes(out_base / rel_content, buf.getvalue())
    rel = lambda p: os.path.relpath(p, out_base)  # noqa: E731
    row = {"id": f"style-{item['style']}-{target.stem}", "task": "style", "prompt": STYLE_PROMPT,
           "input_images": [rel(item["reference"]), rel_content], "targets": [rel(target)],
           "meta": {"source": "destylize", "style": item["style"], "model": cfg["model"],
                    "description": item["description"]}}
    return Outcome.keep([row])


def run(args) -> int:
    from .stage import finish_stage, out_base, run_kwargs, run_stage, work_dir_for

    root, out = Path(args.styles), Path(args.out)
    base = out_base(out, root)
    api = endpoint.endpoint_config(args, "image", json_mode=False)
    groups, rejected = grouped_images(root)
    items = []
    for style, paths in groups.items():
        for k, p in enumerate(paths):
            ref = str(paths[(k + 1) % len(paths)].resolve()) if len(paths) > 1 else None
            items.append((f"{style}/{p.name}", {"style": style, "path": str(p.resolve()), "reference": ref,
                                                "out_base": str(base), "description": description(p)}))
    cfg = {"model": api.model, "size": args.size, "dup_distance": args.dup_distance}
    settings = {**cfg, "endpoint": endpoint.settings(api)}
    init = functools.partial(endpoint.open_client, "image", api)
    st = Stage("destylize", STEPS, functools.partial(process_image, cfg), init=init, executor="thread",
               fatal=(EndpointError,))
    init()  # a missing key fails here, before any work
    kw = run_kwargs(args)
    result = run_stage(st, items, work_dir_for(out), settings, **kw)
    return finish_stage(st, items, result, [str(root)], out, settings, kw["shard"], rejected_inputs=rejected)

