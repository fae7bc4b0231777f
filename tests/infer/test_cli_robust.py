"""`loom generate` before and after the model: every argument is checked before loading (one-line errors, exit 2,
nothing written), an unwritable --out is found first, Ctrl-C and late write failures keep the finished frames,
new folders follow the umask, and the diffusers spellings work."""

from __future__ import annotations

import json
import os
import stat

import pytest
from infer_helpers import FIXTURE, TINY_ARGS
from PIL import Image

import loom.infer.output as output_mod
from loom.infer.__main__ import main
from loom.infer.pipeline import LoomPipeline

PLAN4 = "Step 1: outline\nStep 2: colour\nStep 3: shade\nStep 4: sign\n"


@pytest.fixture()
def no_load(monkeypatch):
    """Fail the test if the model is loaded: these errors must come first."""
    def boom(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(LoomPipeline, "from_pretrained", classmethod(boom))


def _gen(task, out, *extra, prompt="a red square"):
    return main([task, "--model", str(FIXTURE), "--out", str(out), "--prompt", prompt, *TINY_ARGS, *extra])


@pytest.mark.parametrize("flags, msg", [
    (["--plan-steps", "-2"], "--plan-steps must be ≥ 1, got -2"),
    (["--timesteps", "0"], "--timesteps (--num-inference-steps) must be ≥ 2, got 0"),
    (["--num-inference-steps", "1"], "must be ≥ 2, got 1"),
    (["--resolution", "30"], "--resolution 30x30: width and height must be multiples of 16"),
    (["--height", "32"], "--height and --width go together"),
    (["--device", "cuda"], "--device cuda: CUDA is not available"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--device", "meta"], "--device meta is not available here"),
    (["--dtype", "fp8"], "--dtype: unknown dtype 'fp8'"),
    (["--k-max", "-1"], "--k-max must be ≥ 0"),
    (["--cfg-interval", "0.5,0.2"], "--cfg-interval 0.5,0.2: need 0 ≤ LO ≤ HI ≤ 1"),
    (["--entity-threshold", "0.5"], "need --entity-scale"),
    (["--negative-prompt", "  "], "--negative-prompt is empty"),
])
def test_arguments_checked_before_loading(tmp_path, capsys, no_load, flags, msg):
    if "--device" in flags and flags[1] == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    rc = _gen("tutorial", out, *flags)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("loom generate: error:") and msg in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_renamed_steps_flag_says_what_it_became(tmp_path, capsys, no_load):
    with pytest.raises(SystemExit) as e:
        _gen("tutorial", tmp_path / "o", "--steps", "3")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--steps was renamed: use --plan-steps N" in err and "--timesteps" in err


def test_unwritable_out_is_refused_before_loading(tmp_path, capsys, no_load):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = _gen("t2i", blocker / "sub" / "out")
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot create --out {blocker / 'sub' / 'out'}: {blocker} is a file" in err, err
    if os.geteuid() != 0:  # root writes anywhere: the permission bits only stop other users
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        rc = _gen("t2i", ro / "out")
        assert rc == 2 and "is not writable" in capsys.readouterr().err


def test_late_write_failure_keeps_frames(tmp_path, capsys, monkeypatch):
    """The final move fails after generating (disk full, permissions changed): the frames survive, reported."""
    def fail_commit(tmp, out):
        raise PermissionError(13, "Permission denied", str(out))
    monkeypatch.setattr(output_mod, "_commit", fail_commit)
    out = tmp_path / "crane"
    rc = _gen("t2i", out)
    err = capsys.readouterr().err
    kept = tmp_path / "crane.partial"
    assert rc == 1 and f"the finished files are kept in {kept}" in err, err
    assert (kept / "frame_01.png").is_file() and json.loads((kept / "result.json").read_text())["steps"]
    assert not out.exists() and not list(tmp_path.glob(".crane.tmp-*"))


def test_ctrl_c_keeps_finished_frames(tmp_path, capsys, monkeypatch):
    """Ctrl-C while frame 3 of 4 renders: frames 1-2 land in OUT.partial with the plan; one line, exit 130."""
    plan = tmp_path / "plan.txt"
    plan.write_text(PLAN4)

    def progress(self, enabled, steps, label):
        def start(t, n, hist):
            if t == 3:
                raise KeyboardInterrupt
        return start
    monkeypatch.setattr(LoomPipeline, "_progress", progress)
    out = tmp_path / "tut"
    rc = _gen("tutorial", out, "--planner", "fixed", "--plan-file", str(plan), prompt="How to paint a fish")
    err = capsys.readouterr().err
    kept = tmp_path / "tut.partial"
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == f"loom generate: interrupted; kept the 2 finished frame(s) of 4 in {kept}"
    assert "Traceback" not in err and not out.exists()
    d = json.loads((kept / "result.json").read_text())
    assert d["status"] == "interrupted" and d["plan"] == ["outline", "colour", "shade", "sign"]
    assert [s["image"] for s in d["steps"]] == ["frame_01.png", "frame_02.png"]
    assert [s["history"] for s in d["steps"]] == [[], [1]]
    assert sorted(p.name for p in kept.glob("frame_*.png")) == ["frame_01.png", "frame_02.png"]


def test_new_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "new" / "item"
        assert _gen("t2i", out) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0700
    assert stat.S_IMODE((out / "result.json").stat().st_mode) == 0o644


def test_diffusers_spellings(tmp_path):
    out, base = tmp_path / "a", tmp_path / "b"
    common = ["--num-inference-steps", "3", "--guidance-scale", "5.0", "--image-guidance-scale", "1.5",
              "--height", "32", "--width", "48", "--seed", "4"]
    assert main(["t2i", "--model", str(FIXTURE), "--out", str(out), "--prompt", "a red square", "--no-progress",
                 *common, "--negative-prompt", "blurry, low quality"]) == 0
    s = json.loads((out / "result.json").read_text())["settings"]
    assert (s["num_timesteps"], s["cfg_text_scale"], s["cfg_img_scale"]) == (3, 5.0, 1.5)
    assert s["output_size"] == [48, 32] and s["negative_prompt"] == "blurry, low quality"
    assert Image.open(out / "frame_01.png").size == (48, 32)
    # the negative prompt is what the text-unconditional branch reads: same seed, other pixels
    assert main(["t2i", "--model", str(FIXTURE), "--out", str(base), "--prompt", "a red square", "--no-progress",
                 *common]) == 0
    assert (out / "frame_01.png").read_bytes() != (base / "frame_01.png").read_bytes()


def test_plan_is_streamed_and_printed(tmp_path, capsys):
    """With progress on, the model's plan appears token by token while written, then the parsed plan."""
    out = tmp_path / "t"
    rc = main(["tutorial", "--model", str(FIXTURE), "--out", str(out), "--prompt", "How to fold a crane",
               *[a for a in TINY_ARGS if a != "--no-progress"]])
    err = capsys.readouterr().err
    assert "[loom] writing the plan: " in err  # streamed before parsing (random weights: no usable plan)
    assert rc == 1 and "wrote no usable plan" in err
    plan = tmp_path / "plan.txt"
    plan.write_text(PLAN4)
    rc = main(["tutorial", "--model", str(FIXTURE), "--out", str(out), "--prompt", "How to fold a crane",
               "--planner", "fixed", "--plan-file", str(plan), *[a for a in TINY_ARGS if a != "--no-progress"]])
    err = capsys.readouterr().err
    assert rc == 0 and "[loom] plan (4 steps):\n  Step 1: outline\n  Step 2: colour" in err
