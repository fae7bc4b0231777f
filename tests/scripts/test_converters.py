"""The dataset converters on tiny generated samples: their manifests validate cleanly."""

import importlib.util
import json
from pathlib import Path

from PIL import Image

from loom.data.validate import validate_manifest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _img(path: Path, color, size=(32, 32)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path.name


def test_recipegen(tmp_path):
    src = tmp_path / "recipegen"
    for rid, n in (("r1", 4), ("r2", 2), ("r3", 3)):
        steps = [{"instruction": f"step {k} of {rid}", "image": _img(src / f"{rid}_{k}.jpg", (k * 50, 0, 0))}
                 for k in range(n)]
        (src / f"{rid}.json").write_text(json.dumps({"id": rid, "title": f"dish {rid}", "steps": steps}))
    (src / "r3_2.jpg").unlink()  # a missing frame drops the recipe
    out = tmp_path / "out"
    stats = _load("convert_recipegen").convert(src, out, min_steps=3, copy_images=True)
    assert stats == {"rows": 1, "too_few_steps": 1, "missing_image": 1, "missing_text": 0}
    row = json.loads((out / "train.jsonl").read_text())
    assert row["task"] == "tutorial" and row["prompt"] == "How to make dish r1"
    assert row["plan"] == [f"step {k} of r1" for k in range(4)] and len(row["frames"]) == 4
    assert Image.open(out / row["frames"][2]).getpixel((0, 0)) == (100, 0, 0)
    rep = validate_manifest(out / "train.jsonl")
    assert rep.num_records == 1 and not rep.errors


def test_makeanything_splits_grid_panels(tmp_path):
    src = tmp_path / "grids"
    src.mkdir()
    grid = Image.new("RGB", (60, 40))
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    for k, c in enumerate(colors):  # 2 rows × 3 columns of 20×20 panels
        grid.paste(c, (20 * (k % 3), 20 * (k // 3), 20 * (k % 3) + 20, 20 * (k // 3) + 20))
    grid.save(src / "fox.png")
    (src / "fox.txt").write_text("Draw a fox\n" + "\n".join(f"Step {k + 1}: stroke {k + 1}" for k in range(6)))
    Image.new("RGB", (10, 10)).save(src / "orphan.png")  # no caption: skipped and counted
    out = tmp_path / "out"
    stats = _load("convert_makeanything").convert(src, out)
    assert stats == {"rows": 1, "no_caption": 1, "shape_mismatch": 0}
    row = json.loads((out / "train.jsonl").read_text())
    assert row["plan"] == [f"stroke {k + 1}" for k in range(6)] and row["meta"]["grid"] == "2x3"
    got = [Image.open(out / f).getpixel((10, 10)) for f in row["frames"]]
    assert got == colors and Image.open(out / row["frames"][0]).size == (20, 20)
    assert not validate_manifest(out / "train.jsonl").errors


def test_omnicontext_folders(tmp_path):
    src = tmp_path / "omni"
    for name, n_in in (("s1", 2), ("s2", 3)):
        d = src / name
        for k in range(n_in):
            _img(d / f"input_{k + 1}.png", (0, 40 * k, 0))
        _img(d / "output.png", (9, 9, 9))
        (d / "instruction.txt").write_text(f"Put <image 1> next to <image 2> ({name})")
    (src / "s3").mkdir()
    _img(src / "s3" / "input_1.png", (1, 1, 1))  # no instruction, no output
    _img(src / "s10" / "input_10.png", (0, 0, 0))
    _img(src / "s10" / "input_2.png", (0, 0, 0))
    _img(src / "s10" / "target.png", (0, 0, 0))
    (src / "s10" / "meta.json").write_text(json.dumps({"prompt": "Style <image 2> like <image 1>", "task": "style"}))
    out = tmp_path / "out"
    stats = _load("convert_omnicontext").convert(src, out)
    assert stats == {"rows": 3, "no_instruction": 1, "no_images": 0}
    rows = {r["id"]: r for r in map(json.loads, (out / "train.jsonl").read_text().splitlines())}
    assert rows["omnicontext-s2"]["task"] == "compose" and len(rows["omnicontext-s2"]["input_images"]) == 3
    assert rows["omnicontext-s10"]["task"] == "style"
    assert [Path(p).name for p in rows["omnicontext-s10"]["input_images"]] == ["input_2.png", "input_10.png"]
    assert not validate_manifest(out / "train.jsonl").errors


def test_bench_train_cpu(tmp_path):
    bench = _load("bench_train")
    assert bench.main(["--steps", "2", "--warmup", "1", "--cpu-only", "--out", str(tmp_path / "b.json")]) == 0
    (res,) = json.loads((tmp_path / "b.json").read_text())
    assert res["device"] == "cpu" and res["steps"] == 2
    assert res["tokens_per_s"] > 0 and 0 < res["mfu"] < 1 and res["peak_mem_gb"] > 0
