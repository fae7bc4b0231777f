"""The template renderer: autoescaping on, undefined names are errors, templates ship in the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jinja2
import pytest

from loom.utils.templates import data_url, environment, render

ROOT = Path(__file__).parents[2]


def test_autoescape_and_strict_undefined(tmp_path):
    env = environment()
    t = env.from_string("<p>{{ x }}</p>")
    assert t.render(x="<script>alert(1)</script> & co") == "<p>&lt;script&gt;alert(1)&lt;/script&gt; &amp; co</p>"
    with pytest.raises(jinja2.UndefinedError):
        render("storyboard.html.j2")  # no `sb`: an error, not an empty page
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    assert data_url(tmp_path / "a.png") == "data:image/png;base64,iVBORw=="


def test_templates_are_package_data(tmp_path):
    names = sorted(p.name for p in (ROOT / "loom" / "templates").iterdir())
    assert {"base.html.j2", "macros.html.j2", "storyboard.html.j2", "gallery.html.j2"} <= set(names)
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "loom", src / "loom", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("loom-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("loom/templates/")}
    assert shipped == {f"loom/templates/{n}" for n in names}
