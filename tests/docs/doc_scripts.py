"""Tiny-scale runners for `python scripts/…` and the non-CLI modules (`python -m loom.demo`, check_reference)."""

from __future__ import annotations

from pathlib import Path

from doc_harness import ROOT, Session, split
from doc_runners import _set, call, module_main, ok, script_main

# script → how its README command is shrunk (flags set / replaced); outputs stay in the workspace
SCRIPT_TINY: dict[str, dict[str, str | None]] = {
    "bench_forward.py": {"--steps": "1", "--samples": "1", "--out": "evals/perf/forward_cpu.json"},
    "bench_train.py": {"--steps": "1", "--warmup": "0", "--cpu-only": None, "--out": "evals/perf/train_cpu.json"},
    "bench_infer.py": {"--plan-steps": "1", "--timesteps": "2", "--resolution": "32", "--repeats": "1",
                       "--backend": "sdpa", "--out": "evals/perf/infer_cpu.json"},
    # the computed 7B weight footprint only (the quant part loads four narrow models: minutes)
    "bench_memory.py": {"--part": "weights7b", "--out-dir": "evals/perf"},
    # the world-model ablation at the size of tests/scripts/test_ablation_shapes.py, one variant, one seed
    "ablation_shapes.py": {"--train-steps": "2", "--seeds": "0", "--variants": "full", "--jobs": "1",
                           "--n-test": "1", "--n-test-image": "1"},
}
# world model and data of tests/world/test_demo.py (`--set` training-config overrides)
TINY_WORLD_SET = ["model.overrides.llm.hidden_size=64", "model.overrides.llm.intermediate_size=128",
                  "model.overrides.llm.num_hidden_layers=2", "model.overrides.llm.num_attention_heads=4",
                  "data.max_tokens=768", "data.max_tokens_per_sample=768", "optim.warmup_steps=2",
                  "log.progress=false"]
ABLATION_SET = [a for o in TINY_WORLD_SET for a in ("--set", o)] + [
    a for t, n in (("tutorial", 8), ("image_tutorial", 2), ("compose", 2), ("style", 2))
    for a in ("--n-train", f"{t}={n}")]


def run_script(s: Session, path: Path, argv: list[str]) -> None:
    name = path.name
    assert name in SCRIPT_TINY, f"no tiny settings for scripts/{name} (add them to SCRIPT_TINY)"
    for flag, value in SCRIPT_TINY[name].items():
        if flag == "--seeds" and "--seeds" in argv:  # nargs="+": drop the README's values
            i = argv.index("--seeds")
            j = i + 1
            while j < len(argv) and not argv[j].startswith("-"):
                j += 1
            argv = argv[:i] + argv[j:]
        argv = _set(argv, flag, value)
    if name == "ablation_shapes.py":
        argv += ABLATION_SET
    ok(*call(script_main(s.path(path) if (s.ws / path).exists() else ROOT / path), argv), f"{path} {argv}")


def run_demo(s: Session, argv: list[str]) -> None:
    """`python -m loom.demo [...]`: the real argument parsing and `run_demo`, on the miniature world of
    tests/world/test_demo.py (a few seconds of training); `--smoke` runs as written (it is tiny already)."""
    import loom.world.demo as wd

    if "--smoke" in argv:  # every stage as written; parity on two cases (all eight: the check_reference tests)
        import loom.tools.check_reference as cr

        real_check = cr.check
        cr.check = lambda root, only=None, **kw: real_check(root, only=SMOKE_CASES, **kw)
        try:
            ok(*call(module_main("loom.demo"), argv), "python -m loom.demo --smoke")
        finally:
            cr.check = real_check
        return
    real = wd.run_demo

    def tiny(cfg, out, log=None, stages=("data", "train", "generate")):
        import dataclasses

        small = dataclasses.replace(
            cfg, train_steps=3, threads=1, overrides=[*cfg.overrides, *TINY_WORLD_SET],
            n_train={"tutorial": 8, "image_tutorial": 2, "compose": 2, "style": 2},
            n_test={"tutorial": 1, "image_tutorial": 1, "compose": 1, "style": 1},
            generation={**cfg.generation, "num_timesteps": 2})
        return real(small, out, log=lambda line: None, stages=stages)
    wd.run_demo = tiny
    try:
        rc, out_, err = call(module_main("loom.demo"), argv)
    finally:
        wd.run_demo = real
    assert rc in (0, 1), f"python -m loom.demo exited {rc}: {err[-2000:]}"  # 1: a 3-step model misses the bar
    out = s.path(argv[argv.index("--out") + 1] if "--out" in argv else "runs/demo")
    assert (out / "report.html").is_file() and (out / "metrics.json").is_file()


def run_demo_followup(s: Session, cmd) -> None:
    """`loom generate … --model runs/demo/model --config runs/demo/generation.yaml …`: the README's follow-ups on
    the export of the (miniature) demo, run first if the session has none; the demo's own inputs and sampler file
    as written, 2 timesteps, and a fixed plan in the world's wording (a 3-step model writes no usable plan)."""
    from loom.__main__ import main

    if not s.path("runs/demo/model").is_dir():
        run_demo(s, ["--out", "runs/demo"])
    argv = split(cmd.text, s.env)[1:]
    argv = _set(_set(argv, "--timesteps", "2"), "--no-progress", None)
    if argv[1] == "tutorial":
        plan = s.ws / "world_plan.txt"
        plan.write_text("Step 1: In the top left, draw a red circle.\n")
        argv += ["--planner", "fixed", "--plan-file", str(plan)]
    ok(*call(main, argv), f"loom {' '.join(argv)}")
    out = s.path(argv[argv.index("--out") + 1])
    assert (out / "result.json").is_file() and (out / "index.html").is_file()


def run_check_reference(s: Session, argv: list[str]) -> None:
    """As written on two of the fixture's cases (tests/tools/test_check_reference.py runs every case)."""
    cases = [a for c in SMOKE_CASES for a in ("--case", c)]
    ok(*call(module_main("loom.tools.check_reference"), [str(ROOT / argv[0]), *argv[1:], *cases]),
       "check_reference")


SMOKE_CASES = ["images", "infer_edit"]


MODULE_RUNNERS = {"loom.demo": run_demo, "loom.tools.check_reference": run_check_reference}


# ---- ```python blocks ---------------------------------------------------------------------------------------------
def run_python_block(s: Session, cmd, prepare=None) -> None:
    """exec the block in the document's namespace (blocks may build on each other), in the workspace."""
    if prepare is not None:
        prepare(s)
    ns = s.local.setdefault("python", {"__name__": "__docs__"})
    exec(compile(cmd.text, f"{cmd.doc}:{cmd.line}", "exec"), ns)


def run_api_example(s: Session, cmd) -> None:
    """The README's LoomPipeline example with the fixture as MODEL_DIR, on CPU; `pipe(...)` keeps every keyword
    the example passes but shrinks sizes and steps, and a tutorial without a planner gets a fixed plan (random
    weights write none)."""
    from doc_harness import FIXTURE
    from doc_runners import PLAN, tiny_image

    from loom.infer.pipeline import LoomPipeline
    from loom.infer.planner import FixedPlanner

    real_fp, real_call = LoomPipeline.from_pretrained.__func__, LoomPipeline.__call__

    def from_pretrained(cls, path, dtype=None, device=None, **kw):
        assert dtype is not None or "torch_dtype" in kw, "the example shows the dtype argument"
        return real_fp(cls, path, device="cpu", verbose=False)

    def tiny_call(self, task="tutorial", prompt=None, images=None, seed=None, **kw):
        kw.update(num_inference_steps=2, vae_transform=(64, 32), vit_transform=(56, 28))
        if "height" in kw:
            kw.update(height=32, width=32)
        if task == "tutorial" and kw.get("planner") is None:
            kw["planner"] = FixedPlanner(PLAN)
        return real_call(self, task, prompt, images, seed, **kw)

    for name in ("photo.jpg",):
        tiny_image(s.path(name))
    LoomPipeline.from_pretrained = classmethod(from_pretrained)
    LoomPipeline.__call__ = tiny_call
    try:
        code = cmd.text.replace('"MODEL_DIR"', repr(str(FIXTURE)))
        exec(compile(code, f"{cmd.doc}:{cmd.line}", "exec"), {"__name__": "__docs__"})
    finally:
        LoomPipeline.from_pretrained = classmethod(real_fp)
        LoomPipeline.__call__ = real_call
    assert (s.ws / "out/crane-api/result.json").is_file() and (s.ws / "step_1.png").is_file()


def _t2i_parquet_inputs(s: Session) -> None:
    from doc_runners import tiny_image

    tiny_image(s.path("tri.png"))
    s.path("t2i").mkdir(exist_ok=True)
