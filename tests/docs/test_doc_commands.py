"""Every command in README.md, evals/README.md, configs/train/README.md and data/README.md runs at tiny scale, so
the docs cannot drift from the code. A command no `COVER` entry matches fails `test_every_command_is_covered`.

Adding coverage for a new command = one `Cover(pattern, runner, why)` line below (first match wins); a new
`python -m` module gets a runner in doc_scripts.MODULE_RUNNERS, a new script its tiny flags in SCRIPT_TINY.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from doc_harness import FIXTURE, ROOT, Command, Cover, extract, run_session, split
from doc_runners import (
    run_accelerate,
    run_export,
    run_help,
    run_loom,
    run_make,
    run_pip_extra,
    run_python,
    run_torchrun,
)
from doc_scripts import _t2i_parquet_inputs, run_api_example, run_demo_followup, run_python_block

DOCS = ["README.md", "evals/README.md", "configs/train/README.md", "data/README.md"]
SYNOPSIS = r"…|\[|\]|<\w+>|\bCONFIG\.yaml\b|\bSRC OUT\b|\|"  # placeholders: the command is shown, not run


def run_pytest_collect(s, cmd: Command) -> None:
    """`pytest PATH`: collected (running it would nest this suite); every test module imports."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *split(cmd.text, s.env)[1:]],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and ".py: " in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def run_wandb_sync(s, cmd: Command) -> None:
    """`wandb sync RUN`: the installed wandb CLI has the command (syncing needs the network)."""
    from click.testing import CliRunner
    from wandb.cli.cli import cli

    r = CliRunner().invoke(cli, ["sync", "--help"])
    assert r.exit_code == 0 and "offline" in r.output.lower(), r.output


def run_in_construct_test(s, cmd: Command) -> None:
    """data/README.md "Building a dataset": tests/data/construct/test_readme_commands.py runs this section's
    bash blocks in order with its own fake VLM / image servers and videos; here: the command is one it runs."""
    import importlib.util
    import sys

    from doc_harness import _squash, _strip_comment

    here = ROOT / "tests" / "data" / "construct"
    sys.path.insert(0, str(here))
    try:
        spec = importlib.util.spec_from_file_location("construct_readme", here / "test_readme_commands.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(here))
    assert cmd.text in {_squash(_strip_comment(c)) for c in mod.readme_commands()}, cmd.text


COVER = [
    Cover(r".", run_in_construct_test, "run by tests/data/construct/test_readme_commands.py",
          section="Building a dataset"),
    # ```python blocks
    Cover(r"^from loom import LoomPipeline", run_api_example, "fixture as MODEL_DIR, CPU, 2 steps, 32 px"),
    Cover(r"^import pyarrow", lambda s, c: run_python_block(s, c, _t2i_parquet_inputs), "tri.png made first"),
    Cover(r"^import datasets", run_python_block, "uses the previous block's rows"),
    # shell commands and commands in prose
    Cover(r"^pip install -e \"\"$", run_pip_extra, "the extra exists in pyproject.toml (quotes blanked)"),
    Cover(r"^wandb sync ", run_wandb_sync, "the wandb CLI has `sync`"),
    Cover(SYNOPSIS, run_help, "a synopsis: --help runs and lists every flag shown"),
    Cover(r"^export ", run_export, "workspace stand-ins for BAGEL_DIR, LOOM_DATA, LOOM_RUNS, …"),
    Cover(r"^(loom( [a-z-]+)*|accelerate launch|torchrun|python -m [\w.]+)$", run_help, "a command named in prose: --help"),
    Cover(r"^loom (train|data validate) --[\w-]+$", run_help, "a flag named in prose: --help lists it"),
    Cover(r"^\S*/bin/loom serve\b", run_help, "a server that blocks: --help lists the flags shown (tests/app "
          "serves it)"),
    Cover(r"^loom generate \w+ --model runs/demo/model ", run_demo_followup,
          "on the miniature demo's export (run first if needed), its data and generation.yaml, 2 timesteps"),
    Cover(r"^loom ", lambda s, c: run_loom(s, split(c.text, s.env)[1:]),
          "in-process; generate: fixture model, 32 px, 2 timesteps, fixed plan (random weights write none); "
          "train: one tiny step; data validate: tiny manifests"),
    Cover(r"^python3? (-m \S+|scripts/\S+\.py)", run_python, "python -m MODULE / scripts at tiny scale"),
    Cover(r"^accelerate launch ", run_accelerate, "accelerate's parser checks the launch flags; module in-process"),
    Cover(r"^torchrun ", run_torchrun, "torchrun's parser checks the flags; module in-process"),
    Cover(r"^make ", run_make, "make -n: the target and variables exist"),
    Cover(r"^pytest ", run_pytest_collect, "collect-only"),
]


def _covered(cmd: Command) -> bool:
    return any(c.matches(cmd) for c in COVER)


@pytest.fixture(scope="module")
def shared_cache() -> dict:
    return {}


def _workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    for d in ("configs", "data", "evals", "scripts"):  # copies: commands may write there (id lists, perf JSON)
        shutil.copytree(ROOT / d, ws / d)
    (ws / "tests").symlink_to(ROOT / "tests")  # read-only: the fixture model and tokenizer
    return ws


def test_every_command_is_covered():
    found = {d: extract(d) for d in DOCS}
    assert all(found.values()), "a README lost all its commands (extraction broken?)"
    uncovered = [str(c) for cmds in found.values() for c in cmds if not _covered(c)]
    assert not uncovered, "commands no COVER entry runs (add one):\n" + "\n".join(uncovered)


def test_extraction_and_an_uncovered_command_fails(tmp_path, monkeypatch):
    """The harness itself: continuations, comments, exports and loops are read; an unknown command is caught."""
    import doc_harness

    md = tmp_path / "x.md"
    md.write_text("Run `loom generate --help` or `make`.\n\n```bash\nexport A=1\n# a comment\n"
                  "loom generate t2i --model M \\\n    --prompt 'a # b' --out o   # trailing\n"
                  "for r in one two; do\n  rmdir runs/$r\ndone\n```\n")
    monkeypatch.setattr(doc_harness, "ROOT", tmp_path)
    cmds = [c.text for c in extract("x.md")]
    assert cmds == ["loom generate --help", "export A=1", "loom generate t2i --model M --prompt 'a # b' --out o",
                    "rmdir runs/one", "rmdir runs/two"]
    assert [_covered(c) for c in extract("x.md")] == [True, True, True, False, False]


@pytest.mark.parametrize("doc", DOCS)
def test_doc_commands_run(doc, tmp_path, monkeypatch, shared_cache):
    cmds = extract(doc)
    missing = [str(c) for c in cmds if not _covered(c)]
    assert not missing, missing
    ws = _workspace(tmp_path)
    env = {"BAGEL_DIR": str(FIXTURE), "LOOM_MODEL": str(FIXTURE), "LOOM_RUNS": str(ws / "runs"),
           "OPENAI_API_KEY": "sk-fake-docs", "OMP_NUM_THREADS": "1", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    threads, environ = torch.get_num_threads(), dict(os.environ)
    try:
        s = run_session(doc, cmds, COVER, ws, env, shared_cache, monkeypatch)
    finally:
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(environ)
    assert len(s.ran) == len(cmds)
    print(f"\n{doc}: seconds per command\n" + "\n".join(s.ran))
