"""Every command of data/README.md "Building a dataset" runs as written, at tiny scale: the test only sets the
README's own variables (DATA, VLM_MODEL, CLIP, TRAIN_CONFIG, …), points OPENAI_BASE_URL at a fake server on
127.0.0.1 and executes the bash blocks in order with `set -euo pipefail`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from videos import black, states, tutorial_video_frames, write_video

from loom.world.shapes import Element

ROOT = Path(__file__).resolve().parents[3]
SECTION = "## Building a dataset"


def readme_commands() -> list[str]:
    text = (ROOT / "data" / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S)
    return [ln for b in blocks for ln in b.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _png(path: Path, image: np.ndarray | Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(path)
    return path


def _inputs(data: Path) -> None:
    frames, _ = tutorial_video_frames(hold=3)
    write_video(data / "raw" / "cooking.mp4", frames)
    other = [Element("blue", "square", c) for c in ("bottom", "left", "right", "top")]
    write_video(data / "raw" / "painting.mp4", [black()] + [f for s in states(4, other) for f in [s] * 3])
    for k, s in enumerate(states(5, [Element("green", "circle", c) for c in
                                     ("center", "top left", "bottom right", "top right", "bottom left")]), 1):
        _png(data / "raw" / "photos" / f"step{k}.png", s)
    _png(data / "heldout" / "unrelated.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for cat, colors in (("models", [(200, 30, 30), (30, 30, 200)]), ("garments", [(30, 200, 30), (90, 90, 90)])):
        for k, c in enumerate(colors):
            img = Image.new("RGB", (32, 32), "white")
            img.paste(c, (4 * k, 2, 4 * k + 12 + 8 * (cat == "models"), 30))
            _png(data / "subjects" / cat / f"{cat}{k}.png", img)
    for k in range(2):  # asymmetric pictures: the fake edit (a transpose) visibly changes them
        _png(data / "styles" / "ink" / f"ink{k}.png", states(3)[k + 1])
    recipes = data / "recipegen_raw"
    for r in range(2):
        steps = [{"text": f"Step {k + 1}: do {k} of dish {r}",
                  "image": _png(recipes / f"r{r}_{k}.png", s).name} for k, s in enumerate(states(3))]
        (recipes / f"r{r}.json").write_text(json.dumps({"id": f"r{r}", "title": f"dish {r}", "steps": steps}))
    grid = Image.new("RGB", (128, 128))
    for k, s in enumerate(states(4)):
        grid.paste(Image.fromarray(s), (64 * (k % 2), 64 * (k // 2)))
    _png(data / "makeanything_raw" / "fox.png", grid)
    (data / "makeanything_raw" / "fox.caption").write_text(
        "2*2 of 4 sub-images, step-by-step oil painting of shapes\n" + "\n".join(f"Step {k}: part {k}" for k in range(1, 5)))
    sample = data / "omnicontext_raw" / "s1"
    _png(sample / "input_1_model.png", states(1)[0])
    _png(sample / "input_2_garment.png", states(2)[1])
    _png(sample / "output.png", states(3)[2])
    (sample / "instruction.txt").write_text("Dress <image 1> in <image 2>.")


def test_readme_commands_run_at_tiny_scale(tmp_path, fake_server, tiny_clip_dir):
    commands = readme_commands()
    assert any(c.startswith("loom data frames") for c in commands) and len(commands) >= 14
    data = tmp_path / "data"
    _inputs(data)
    srv = fake_server()
    run_dir = tmp_path / "run"
    env = {**os.environ, "DATA": str(data), "VLM_MODEL": "fake-vlm", "IMAGE_MODEL": "fake-image",
           "CLIP": str(tiny_clip_dir), "CLIP_MIN": "-1", "TRAIN_CONFIG": "configs/train/tiny_cpu.yaml",
           "TRAIN_OVERRIDES": f"run.dir={run_dir} run.total_steps=2 data.sources.examples.path={data}/train.jsonl "
                              "data.sources.synthetic.weight=0 data.max_tokens=4096 data.max_tokens_per_sample=2048 "
                              "checkpoint.every=0 log.every=1",
           "OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "sk-test", "LOOM_API_CACHE": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "TQDM_DISABLE": "1"}
    script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = lambda p: [json.loads(x) for x in (data / p).read_text().splitlines()]  # noqa: E731
    assert len(rows("work/frames.jsonl")) == 3 and len(rows("work/captioned.jsonl")) == 3
    assert len(rows("train.jsonl")) == 3 and len(rows("compose.jsonl")) == 8 and len(rows("style.jsonl")) == 2
    assert len(rows("recipegen/train.jsonl")) == 2 and len(rows("makeanything/refined.jsonl")) == 1
    assert "<model> <image 1>" in rows("omnicontext/train.jsonl")[0]["prompt"]
    assert [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    for report in ("work/frames.jsonl", "work/captioned.jsonl", "train.jsonl", "compose.jsonl", "style.jsonl"):
        assert (data / f"{report}.funnel.md").is_file()
