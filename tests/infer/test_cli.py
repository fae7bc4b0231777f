"""CLI tasks and bad inputs: clear errors, exit status 2, nothing written (no partial garbage)."""

from __future__ import annotations

import json

import pytest
from infer_helpers import FIXTURE, TINY_ARGS

from loom.__main__ import main as loom_main
from loom.infer.__main__ import main


def _run(task, out, prompt, images=(), extra=()):
    argv = [task, "--model", str(FIXTURE), "--out", str(out), *TINY_ARGS, *extra]
    if prompt is not None:
        argv += ["--prompt", prompt]
    for p in images:
        argv += ["--image", str(p)]
    return main(argv)


def _fixed_plan(tmp_path, n):
    f = tmp_path / "plan.txt"
    f.write_text("\n".join(f"Step {k}: part {k}" for k in range(1, n + 1)))
    return ["--planner", "fixed", "--plan-file", str(f)]


@pytest.mark.parametrize("case", ["missing", "unreadable", "empty", "unknown_ref", "too_many_steps",
                                  "wrong_count", "bad_resolution"])
def test_bad_inputs_fail_cleanly(case, tmp_path, images, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    task, prompt, imgs, extra, msg = {
        "missing": ("edit", "make it red", [tmp_path / "nope.png"], [], "does not exist"),
        "unreadable": ("edit", "make it red", [bad], [], "cannot read input image"),
        "empty": ("t2i", "   ", [], [], "prompt is empty"),
        "unknown_ref": ("compose", "put <image 1> next to <image 3>", images[:2], [], "refers to <image 3>"),
        "too_many_steps": ("tutorial", "draw", [], ["--plan-steps", "7", *_fixed_plan(tmp_path, 7)], "N_max = 6"),
        "wrong_count": ("style", "apply the <style> of <image 1>", images[:1], [], "exactly 2 input image"),
        "bad_resolution": ("t2i", "a cat", [], ["--resolution", "30"], "multiples of 16"),
    }[case]
    rc = _run(task, out, prompt, imgs, extra)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert msg in err and err.startswith("loom generate: error:")
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_compose_style_t2i_edit(tmp_path, images):
    for task, prompt, imgs in (("compose", "The <model> of <image 1> holding the <bag> of <image 2>", images[:2]),
                               ("style", "Apply the <style> of <image 1> to <image 2>.", images[:2]),
                               ("t2i", "a red square", []), ("edit", "make it blue", images[:1])):
        out = tmp_path / task
        assert _run(task, out, prompt, imgs, ["--resolution", "", "--seed", "2"]) == 0, task
        d = json.loads((out / "result.json").read_text())
        assert [s["image"] for s in d["steps"]] == ["frame_01.png"] and (out / "frame_01.png").is_file()
        assert len(d["inputs"]) == len(imgs) and d["plan"] == []
        assert d["forwards"]["per_denoising_step"] == 1.0
        # output size = the last input after the VAE resize rule (the paper's script), else 1024² clamped
        assert d["settings"]["output_size"] == ([32, 32] if imgs else [256, 256])
    t2i = json.loads((tmp_path / "t2i" / "result.json").read_text())["settings"]
    assert (t2i["cfg_text_scale"], t2i["cfg_img_scale"], t2i["cfg_interval"]) == (4.0, 1.0, [0.4, 1.0])
    edit = json.loads((tmp_path / "edit" / "result.json").read_text())["settings"]
    assert (edit["cfg_img_scale"], edit["cfg_renorm_type"]) == (2.0, "text_channel")


def test_decompose_writes_m_images(tmp_path, images):
    out = tmp_path / "dec"
    assert _run("decompose", out, "Extract the <upper> and the <lower> from <image 1>", images[:1]) == 0
    d = json.loads((out / "result.json").read_text())
    assert [s["image"] for s in d["steps"]] == ["frame_01.png", "frame_02.png"]  # M from the entity tokens
    assert [s["history"] for s in d["steps"]] == [[], [1]]  # output 1 fed back clean for output 2
    out3 = tmp_path / "dec3"
    assert _run("decompose", out3, "Split <image 1> into its parts", images[:1], ["--num-outputs", "3"]) == 0
    assert sorted(p.name for p in out3.glob("frame_*.png")) == ["frame_01.png", "frame_02.png", "frame_03.png"]


def test_understand_prints_answer(tmp_path, images, capsys):
    out = tmp_path / "vqa"
    assert _run("understand", out, "What is in <image 1>?", images[:1], ["--max-answer-tokens", "6"]) == 0
    d = json.loads((out / "result.json").read_text())
    assert isinstance(d["answer"], str) and d["steps"] == []
    assert d["answer"] in capsys.readouterr().out


def test_top_level_dispatcher(capsys):
    assert loom_main([]) == 0 and "generate" in capsys.readouterr().out
    assert loom_main(["bogus"]) == 2
    assert loom_main(["generate", "--help"]) == 0 and "--prompt" in capsys.readouterr().out


def test_bench_script(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_infer", Path(__file__).parents[2] / "scripts" / "bench_infer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    rc = bench.main(["--backend", "sdpa", "--plan-steps", "3", "--timesteps", "3", "--resolution", "32", "--repeats", "1",
                     "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["backend"] == "sdpa" and len(r["frame_seconds"]) == 3 and r["forwards_per_denoising_step"] == 1.0
    assert r["history"] == [[], [1], [1, 2]] and r["peak_memory_mib"] > 0


def test_existing_out_folder_and_yaml_config(tmp_path, images):
    """loom.eval's harness pre-creates out/inputs/: inputs are referenced in place, files are moved in, result.json
    last; --config YAML supplies settings and explicit flags win."""
    import shutil
    from pathlib import Path

    out = tmp_path / "item"
    (out / "inputs").mkdir(parents=True)
    shutil.copy(images[0], out / "inputs" / "input_01.png")
    cfg = Path(__file__).parents[2] / "configs" / "infer" / "tiny_cpu.yaml"
    rc = main(["edit", "--model", str(FIXTURE), "--prompt", "make it pink", "--image",
               str(out / "inputs" / "input_01.png"), "--out", str(out), "--config", str(cfg), "--timesteps", "3",
               "--no-progress"])
    assert rc == 0
    d = json.loads((out / "result.json").read_text())
    assert d["inputs"] == ["inputs/input_01.png"] and d["settings"]["num_timesteps"] == 3
    assert d["settings"]["vae_transform"] == [64, 32]
    assert sorted(p.name for p in out.iterdir()) == ["frame_01.png", "index.html", "inputs", "result.json"]
    assert not list(tmp_path.glob(".item.tmp-*"))
