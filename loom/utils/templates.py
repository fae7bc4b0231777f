"""The one way loom renders HTML: jinja2 templates shipped in `loom/templates/` (package data), autoescaped.

    from loom.utils.templates import render
    html = render("storyboard.html.j2", sb=view)          # storyboards, galleries, reports

Every value is escaped unless a template marks it safe, so prompts, plans and model text can never inject markup.
Undefined names are errors (`StrictUndefined`): a template typo fails the test that renders it instead of printing
nothing. `data_url` embeds a file for self-contained pages (a report that is mailed or attached to an issue).
"""

from __future__ import annotations

import base64
import mimetypes
from functools import lru_cache
from pathlib import Path

import jinja2


def data_url(path: str | Path) -> str:
    """`data:` URL of a file (PNG, GIF, MP4 …), for pages that must stand alone."""
    p = Path(path)
    mime = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(p.read_bytes()).decode("ascii")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("loom", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["data_url"] = data_url
    return env


def render(name: str, **context) -> str:
    """Render template `name` (a file in loom/templates/) with `context`."""
    return environment().get_template(name).render(**context)
