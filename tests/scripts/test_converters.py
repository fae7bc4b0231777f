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


def test_recipegen_trains_on_the_eval_prompt(tmp_path):
    from loom.eval.benchmarks import load_recipegen

    src = tmp_path / "recipegen"
    for rid, n in (("r1", 4), ("r2", 2), ("r3", 3), ("r4", 3)):
        steps = [{"text": f"Step {k + 1}: step {k} of {rid}", "image": _img(src / f"{rid}_{k}.jpg", (k * 50, 0, 0))}
                 for k in range(n)]
        (src / f"{rid}.json").write_text(json.dumps({"id": rid, "title": f"dish {rid}", "steps": steps}))
    (src / "r3_2.jpg").unlink()  # a missing frame drops the recipe
    (tmp_path / "test_ids.txt").write_text("# held-out recipes\nr4\n")
    out = tmp_path / "out"
    conv = _load("convert_recipegen")
    stats = conv.convert(src, out, min_steps=3, copy_images=True, exclude={"r4"})
    assert stats == {"rows": 1, "held_out": 1, "too_few_steps": 1, "missing_image": 1, "missing_text": 0}
    row = json.loads((out / "train.jsonl").read_text())
    assert row["task"] == "tutorial" and row["prompt"] == "Create a tutorial for making dish r1."
    # the eval loader builds its prompt from the same template: training and Table 1 share the wording
    (tmp_path / "eval.jsonl").write_text((src / "r1.json").read_text().replace("\n", " ") + "\n")
    (bench,) = load_recipegen(tmp_path / "eval.jsonl")
    assert bench.prompt == row["prompt"]
    assert row["plan"] == [f"step {k} of r1" for k in range(4)] and len(row["frames"]) == 4  # labels stripped
    assert Image.open(out / row["frames"][2]).getpixel((0, 0)) == (100, 0, 0)
    rep = validate_manifest(out / "train.jsonl")
    assert rep.num_records == 1 and not rep.errors
    assert conv.main([str(src), str(tmp_path / "o2"), "--exclude-ids", str(tmp_path / "test_ids.txt")]) == 0


def _grid(path: Path, colors, rows: int, cols: int, panel: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = Image.new("RGB", (cols * panel, rows * panel))
    for k, c in enumerate(colors):
        r, q = divmod(k, cols)
        grid.paste(c, (panel * q, panel * r, panel * q + panel, panel * r + panel))
    grid.save(path)


def test_makeanything_writes_image_to_tutorial_rows_as_evaluated(tmp_path):
    from loom.eval.benchmarks import load_makeanything

    src = tmp_path / "grids"
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    _grid(src / "fox.png", colors, 2, 2)
    caption = "2*2 of 4 sub-images, step-by-step oil painting of a fox."
    (src / "fox.caption").write_text(caption + "\n" + "\n".join(f"Step {k + 1}: stroke {k + 1}" for k in range(4)))
    _grid(src / "owl.png", colors[::-1], 2, 2)
    (src / "owl.caption").write_text("2*2 of 4 sub-images, step-by-step pencil sketch of an owl")  # no steps
    _grid(src / "cat.png", colors * 2 + [(9, 9, 9)], 3, 3)
    (src / "cat.caption").write_text("3*3 of 9 sub-images, a cat\nStep 1: only one step")  # 9 panels, 1 step
    Image.new("RGB", (10, 10)).save(src / "orphan.png")  # no caption: skipped and counted
    out = tmp_path / "out"
    stats = _load("convert_makeanything").convert(src, out)
    assert stats == {"rows": 1, "needs_captions": 1, "no_caption": 1, "held_out": 0, "unknown_layout": 0,
                     "step_count_mismatch": 1}
    row = json.loads((out / "train.jsonl").read_text())
    assert row["prompt"] == "Create a 4-step tutorial that ends at the given image: step-by-step oil painting of a fox."
    assert row["plan"] == [f"stroke {k + 1}" for k in range(4)] and row["meta"]["grid"] == "2x2"
    assert row["input_images"] == [row["frames"][-1]]  # conditioned on the final panel, as Tables 2/4
    assert [Image.open(out / f).getpixel((10, 10)) for f in row["frames"]] == colors
    (fox,) = [it for it in load_makeanything(src) if it.item_id == "fox"]  # the eval item of the same grid
    assert fox.prompt == row["prompt"]
    trained = Image.open(out / row["input_images"][0]).convert("RGB")
    assert fox.inputs[0].tobytes() == trained.tobytes() and fox.inputs[0].size == trained.size
    assert not validate_manifest(out / "train.jsonl").errors
    (owl,) = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]
    assert owl["plan"] == [] and owl["prompt"].startswith("Create a 4-step tutorial") and len(owl["frames"]) == 4


def test_omnicontext_inserts_entity_tokens(tmp_path):
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
    _img(src / "tryon" / "input_1_model.png", (5, 5, 5))  # entity categories from the file names
    _img(src / "tryon" / "input_2_garment.png", (6, 6, 6))
    _img(src / "tryon" / "output.png", (7, 7, 7))
    (src / "tryon" / "instruction.txt").write_text("Dress <image 1> in <image 2>.")
    _img(src / "pair" / "input_1.png", (5, 5, 5))  # entity categories declared in meta.json
    _img(src / "pair" / "input_2.png", (6, 6, 6))
    _img(src / "pair" / "output.png", (7, 7, 7))
    (src / "pair" / "meta.json").write_text(json.dumps({"instruction": "Hand <image 2> to <image 1>.",
                                                       "entities": ["character", "<bag>"]}))
    _img(src / "split" / "input_1.png", (5, 5, 5))
    _img(src / "split" / "output_1.png", (6, 6, 6))
    _img(src / "split" / "output_2.png", (7, 7, 7))
    (src / "split" / "meta.json").write_text(json.dumps({"instruction": "Extract every subject of <image 1>.",
                                                        "task": "decompose", "entities": ["model", "upper"]}))
    out = tmp_path / "out"
    stats = _load("convert_omnicontext").convert(src, out)
    assert stats == {"rows": 6, "no_instruction": 1, "no_images": 0, "bad_entities": 0}
    rows = {r["id"]: r for r in map(json.loads, (out / "train.jsonl").read_text().splitlines())}
    assert rows["omnicontext-s2"]["task"] == "compose" and len(rows["omnicontext-s2"]["input_images"]) == 3
    assert rows["omnicontext-s10"]["task"] == "style"
    assert [Path(p).name for p in rows["omnicontext-s10"]["input_images"]] == ["input_2.png", "input_10.png"]
    assert rows["omnicontext-tryon"]["prompt"] == "Dress <model> <image 1> in <garment> <image 2>."
    assert rows["omnicontext-pair"]["prompt"] == "Hand <bag> <image 2> to <character> <image 1>."
    assert rows["omnicontext-split"]["prompt"] == (
        "Extract every subject of <image 1>. Output order: the <model>, the <upper>.")
    assert rows["omnicontext-s1"]["prompt"] == "Put <image 1> next to <image 2> (s1)"  # no categories: unchanged
    # the rows reference the source images in place (../omni/…): their data root is the common folder
    assert validate_manifest(out / "train.jsonl").errors  # outside the default root (the manifest's folder)
    rep = validate_manifest(out / "train.jsonl", root=tmp_path)
    assert not rep.errors and not [w for w in rep.warnings if "unknown tag" in w.message]


def test_bench_train_cpu(tmp_path):
    bench = _load("bench_train")
    assert bench.main(["--steps", "2", "--warmup", "1", "--cpu-only", "--out", str(tmp_path / "b.json")]) == 0
    (res,) = json.loads((tmp_path / "b.json").read_text())
    assert res["device"] == "cpu" and res["steps"] == 2
    assert res["tokens_per_s"] > 0 and res["tflops_per_device"] > 0 and res["peak_mem_gb"] > 0
    assert res["mfu"] is None and res["peak_tflops_assumed"] == 0.0  # no made-up CPU peak behind an "MFU"
