"""The `loom` console script (an argparse sub-command parser, `--version`) and the cheap top-level package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import loom
from loom.__main__ import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_the_package(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"loom {loom.__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "(.+)"$', pyproject, re.M).group(1) == loom.__version__
    assert main(["--version"]) == 0


def test_help_lists_every_command_and_unknown_is_an_error(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and "--version" in out
    assert main(["bogus"]) == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    assert main(["generate", "--help"]) == 0  # the command's own parser answers its --help
    assert "--num-inference-steps" in capsys.readouterr().out


def test_a_command_is_one_table_entry(tmp_path, monkeypatch, capsys):
    """Adding a sub-command = one COMMANDS entry pointing at a module with main(argv); it gets argv untouched."""
    mod = tmp_path / "loom_fake_cmd.py"
    mod.write_text("def main(argv):\n    print('got', argv)\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "fake", ("loom_fake_cmd", "a fake command"))
    assert main(["fake", "--x", "1", "--help", "--", "y"]) == 3
    assert capsys.readouterr().out.strip() == "got ['--x', '1', '--help', '--', 'y']"
    assert main(["--help"]) == 0 and "a fake command" in capsys.readouterr().out


def test_import_loom_is_cheap_and_lazy():
    code = ("import sys, loom; heavy = [m for m in ('torch', 'transformers', 'loom.infer') if m in sys.modules]; "
            "print(heavy); from loom import LoomPipeline, GenerationSettings; print(LoomPipeline.__module__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[]", "loom.infer.pipeline"]
    assert "LoomPipeline" in dir(loom)
    with pytest.raises(AttributeError):
        loom.NoSuchThing  # noqa: B018
