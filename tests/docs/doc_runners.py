"""Runners for the documentation commands: each takes (session, command), runs the command's own entry point
in-process at tiny scale, and asserts it succeeded. Substitutions are explicit per runner (see `why` in the table
of tests/docs/test_doc_commands.py)."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from doc_harness import FIXTURE, ROOT, Session, split

TINY_GEN = {"--resolution": "32", "--timesteps": "2", "--vae-transform": "64,32", "--vit-transform": "56,28",
            "--max-plan-tokens": "24", "--max-answer-tokens": "4"}
PLAN = "Step 1: outline the shape\nStep 2: fill in the colour\n"
TINY_TRAIN = ["run.total_steps=1", "data.max_tokens=2048", "data.max_tokens_per_sample=2048", "data.num_workers=0",
              "data.build.vae_transform=[64,32,16]", "data.build.vit_transform=[56,28,14]", "checkpoint.every=0",
              "checkpoint.export_at_end=false", "log.wandb=false", "optim.global_batch_size=0",
              "parallel.activation_checkpointing=false"]
# what `export VAR=…` in a README becomes in the workspace
ENV_SUBST = {"BAGEL_DIR": lambda s: str(FIXTURE), "LOOM_MODEL": lambda s: str(FIXTURE),
             "LOOM_DATA": lambda s: str(tiny_loom_data(s)), "LOOM_RUNS": lambda s: str(s.ws / "runs"),
             "OPENAI_API_KEY": lambda s: "sk-fake-docs"}


# ---- in-process execution ---------------------------------------------------------------------------------------
def call(fn, argv: list[str]) -> tuple[int, str, str]:
    """fn(argv) with stdout / stderr captured; SystemExit → its code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = fn(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return (rc if isinstance(rc, int) else 0), out.getvalue(), err.getvalue()


def module_main(name: str):
    """main() of what `python -m name` runs (a package's __main__)."""
    mod = importlib.import_module(name)
    if hasattr(mod, "__path__"):
        mod = importlib.import_module(f"{name}.__main__")
    return mod.main


def script_main(path: Path):
    def run(argv: list[str]) -> int:
        old = sys.argv
        sys.argv = [str(path), *argv]
        try:
            runpy.run_path(str(path), run_name="__main__")
        finally:
            sys.argv = old
        return 0
    return run


def ok(rc: int, out: str, err: str, what: str) -> None:
    assert rc == 0, f"{what} exited {rc}\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-3000:]}"


# ---- tiny inputs ------------------------------------------------------------------------------------------------
def tiny_image(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (40 * seed % 255, 120, 200)).save(path)
    return path


def tiny_loom_data(s: Session) -> Path:
    """$LOOM_DATA for the paper configs: the example manifest split by task (images copied next to it)."""
    root = s.ws / "loomdata"
    if root.exists():
        return root
    rows = [json.loads(x) for x in (ROOT / "data/examples/manifest.jsonl").read_text().splitlines() if x.strip()]
    by_folder = {"compose": "compose", "decompose": "decompose", "style": "style", "recipegen": "tutorial",
                 "makeanything": "tutorial"}
    for folder, task in by_folder.items():
        d = root / folder
        shutil.copytree(ROOT / "data/examples/images", d / "images")
        (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["task"] == task))
    import pyarrow as pa
    import pyarrow.parquet as pq

    t2i = [r for r in rows if r["task"] == "t2i"]
    table = [{**r, "targets": [(ROOT / "data/examples" / p).read_bytes() for p in r["targets"]]} for r in t2i]
    (root / "t2i").mkdir()
    pq.write_table(pa.Table.from_pylist(table), root / "t2i" / "train.parquet")
    return root


def materialize_manifest(s: Session, path: Path) -> None:
    """A manifest path the README names but the workspace lacks: the tiny manifest of that task folder."""
    if path.exists():
        return
    src = tiny_loom_data(s) / path.parent.name
    assert src.is_dir(), f"no tiny manifest for {path} (add its task folder to tiny_loom_data)"
    shutil.copytree(src, path.parent, dirs_exist_ok=True)


def fake_openai(s: Session):
    """One loopback OpenAI-compatible server per session: judge replies (loom.eval.fakes) and plans."""
    if "openai" not in s.local:
        from loom.eval.fakes import FakeOpenAIServer, default_handler

        def handler(body):
            if "plan step-by-step visual tutorials" in json.dumps(body["messages"]):
                return 200, PLAN, 0.0
            return default_handler(body)
        srv = FakeOpenAIServer(handler).__enter__()
        s.closers.append(lambda: srv.__exit__(None, None, None))
        s.local["openai"] = srv
    return s.local["openai"]


def _set(argv: list[str], flag: str, value: str | None, only_if_absent: bool = False) -> list[str]:
    if flag in argv:
        if only_if_absent:
            return argv
        i = argv.index(flag)
        return argv[:i + 1] + [value] + argv[i + 2:] if value is not None else argv
    return argv + ([flag, value] if value is not None else [flag])


# ---- loom generate ----------------------------------------------------------------------------------------------
def tiny_generate_args(s: Session, argv: list[str]) -> list[str]:
    """argv after `generate`: fixture sizes, a fixed plan (random weights write no plan), inputs created."""
    argv = [a if a != "…" else "a tiny test prompt" for a in argv]
    task = argv[0]
    for i, a in enumerate(argv[:-1]):
        if a == "--image" and not s.path(argv[i + 1]).exists():
            tiny_image(s.path(argv[i + 1]), i)
        if a == "--batch" and not s.path(argv[i + 1]).exists():
            tiny_image(s.ws / "batch_in.png")
            s.path(argv[i + 1]).write_text(
                json.dumps({"id": "fish", "prompt": "How to draw a fish"}) + "\n"
                + json.dumps({"id": "paint", "prompt": "Paint this", "input_images": [str(s.ws / "batch_in.png")]})
                + "\n")
    if "--height" in argv:  # the fixture's largest side is far below a real model's: keep the aspect
        h, w = int(argv[argv.index("--height") + 1]), int(argv[argv.index("--width") + 1])
        argv = _set(_set(argv, "--height", "32"), "--width", str(max(16, round(32 * w / h / 16) * 16)))
    for flag in ("--timesteps", "--num-inference-steps"):
        if flag in argv:
            argv = _set(argv, flag, "2")
    for flag, v in TINY_GEN.items():
        if flag == "--resolution" and "--height" in argv:
            continue
        if flag == "--timesteps" and "--num-inference-steps" in argv:
            continue
        argv = _set(argv, flag, v, only_if_absent=True)
    if task == "tutorial":
        if "--planner" not in argv:
            plan = s.ws / "tiny_plan.txt"
            plan.write_text(PLAN)
            argv += ["--planner", "fixed", "--plan-file", str(plan)]
        elif "--planner-url" in argv:
            argv = _set(argv, "--planner-url", fake_openai(s).base_url)
    return _set(argv, "--no-progress", None)


def run_loom(s: Session, argv: list[str]) -> None:
    """`loom …` / `python -m loom …`: the console script's main at tiny scale per sub-command."""
    from loom.__main__ import main

    sub = argv[0]
    if sub == "generate":
        argv = ["generate", *tiny_generate_args(s, argv[1:])]
    elif sub == "train":
        return run_train(s, argv[1:])
    elif sub == "data":
        argv = ["data", *tiny_data_args(s, argv[1:])]
    elif sub == "eval":
        return run_eval(s, argv[1:])
    ok(*call(main, argv), f"loom {shlex.join(argv)}")


# ---- training ---------------------------------------------------------------------------------------------------
def run_train(s: Session, argv: list[str]) -> None:
    """The README's exact config + overrides must resolve and find their inputs; then one tiny step runs
    (the fixture as BAGEL, $LOOM_DATA = the example rows per task, small transforms). Same command: once."""
    from loom.train.__main__ import main
    from loom.train.config import load_train_config
    from loom.train.preflight import preflight

    config, overrides = argv[0], [a for a in argv[1:] if "=" in a]
    cfg = load_train_config(config, overrides)
    preflight(cfg, config, overrides)
    key = ("train", config, tuple(overrides))
    if key in s.cache:
        return
    run_dir = s.ws / "runs" / f"{Path(config).stem}-{len([k for k in s.cache if k[0] == 'train'])}"
    ok(*call(main, [config, *overrides, *TINY_TRAIN, f"run.dir={run_dir}"]), f"loom train {config}")
    s.cache[key] = True


def tiny_data_args(s: Session, argv: list[str]) -> list[str]:
    if argv[0] == "validate":
        materialize_manifest(s, s.path(argv[1]))
        if "--train-config" in argv:  # overrides go right after the manifest (argparse: one positional run)
            argv = [*argv[:2], "data.build.vae_transform=[64,32,16]", "data.build.vit_transform=[56,28,14]",
                    *argv[2:]]
    return argv


# ---- launchers ---------------------------------------------------------------------------------------------------
def run_python(s: Session, cmd) -> None:
    """`python -m MODULE …` or `python scripts/X.py …`, at tiny scale."""
    argv = split(cmd.text, s.env)[1:]
    if argv[0] == "-m":
        return run_module(s, argv[1], argv[2:])
    from doc_scripts import run_script

    run_script(s, Path(argv[0]), argv[1:])


def run_module(s: Session, module: str, argv: list[str]) -> None:
    if module in ("loom", "loom.infer", "loom.train", "loom.data", "loom.eval"):
        sub = {"loom": None, "loom.infer": "generate", "loom.train": "train", "loom.data": "data",
               "loom.eval": "eval"}[module]
        return run_loom(s, argv if sub is None else [sub, *argv])
    from doc_scripts import MODULE_RUNNERS

    assert module in MODULE_RUNNERS, f"no tiny runner for python -m {module} (add one to MODULE_RUNNERS)"
    MODULE_RUNNERS[module](s, argv)


def run_accelerate(s: Session, cmd) -> None:
    """accelerate's own parser checks the launcher flags and --config_file; the module then runs in-process."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    argv = split(cmd.text, s.env)[2:]
    args = launch_command_parser().parse_args(argv)
    if args.config_file:
        load_config_from_file(args.config_file)
    assert args.module, "documented launches use -m MODULE"
    run_module(s, args.training_script, list(args.training_script_args))


def run_torchrun(s: Session, cmd) -> None:
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(split(cmd.text, s.env)[1:])
    assert args.module
    run_module(s, args.training_script, list(args.training_script_args))


def run_export(s: Session, cmd) -> None:
    """`export A=… B=…`: each variable gets its workspace stand-in (ENV_SUBST)."""
    import os

    for assign in split(cmd.text, s.env)[1:]:
        var = assign.split("=", 1)[0]
        assert var in ENV_SUBST, f"exported {var}: add its tiny stand-in to ENV_SUBST"
        s.env[var] = os.environ[var] = ENV_SUBST[var](s)


def run_make(s: Session, cmd) -> None:
    """`make TARGET [VAR=…]` as a dry run (-n): the target and variables exist (running it would rebuild the venv
    or recurse into this suite)."""
    argv = split(cmd.text, s.env)[1:]
    r = subprocess.run(["make", "-n", *argv, f"VENV={s.ws / 'venv'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    ok(r.returncode, r.stdout, r.stderr, f"make -n {shlex.join(argv)}")
    for assign in (a for a in argv if "=" in a):
        assert assign.split("=", 1)[1] in r.stdout, f"{assign} has no effect on the recipe"


def run_pip_extra(s: Session, cmd) -> None:
    """`pip install -e ".[extra]"`: the extra exists in pyproject.toml (installing would need the network)."""
    import re

    import tomllib

    extra = re.search(r"\[(\w+)\]", cmd.text).group(1)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras.get(extra), f"pyproject.toml has no [{extra}] extra"


def run_help(s: Session, cmd) -> None:
    """A synopsis or a command named in prose: the program's --help runs and lists every --flag shown."""
    import re

    words = [w for w in cmd.text.replace("\\|", "|").split() if w]
    n = 3 if words[0].startswith("python") and words[1:2] == ["-m"] else 2 if words[0].startswith("python") else 1
    prog = words[:n]
    for w in words[n:]:  # sub-command words up to the first flag or placeholder
        if w.startswith("-") or not re.fullmatch(r"[a-z][\w-]*", w):
            break
        prog.append(w)
    fn, argv = _entry(prog)
    rc, out, err = call(fn, [*argv, "--help"])
    ok(rc, out, err, f"{' '.join(prog)} --help")
    for flag in re.findall(r"(?<![\w-])(--[\w-]+)", cmd.text):
        assert flag in out, f"{' '.join(prog)} --help does not mention {flag}"


def _entry(prog: list[str]):
    """(main, argv prefix) of a program named by its words."""
    if prog[0] == "loom" or prog[0].endswith("/bin/loom"):  # a venv's console script (`.venv-app/bin/loom`)
        from loom.__main__ import main
        return main, prog[1:]
    if prog[0] in ("python", "python3") and prog[1] == "-m":
        return module_main(prog[2]), prog[3:]
    if prog[0] in ("python", "python3") or prog[0].startswith("scripts/"):
        path = prog[1] if prog[0].startswith("python") else prog[0]
        return script_main(ROOT / path), prog[2 if prog[0].startswith("python") else 1:]
    if prog[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser
        return (lambda a: launch_command_parser().parse_args(a)), []
    if prog[0] == "torchrun":
        from torch.distributed.run import get_args_parser
        return (lambda a: get_args_parser().parse_args(a)), []
    raise AssertionError(f"no --help entry for {' '.join(prog)}")


def run_eval(s: Session, argv: list[str]) -> None:
    from doc_eval import run_eval as _run

    _run(s, argv)
