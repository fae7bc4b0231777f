"""Inputs of `loom data frames`: videos, folders of ordered images, and blog-style HTML / markdown pages with inline
images (paper Fig. 3a: "blogs and videos are collected").

Discovery rules for a folder argument: every video and blog file in it (recursively) is one source, any other
non-image file is reported as unsupported; a folder that
directly holds images is one ordered-image source (natural order: step2 before step10) — except the asset folders
below a folder that holds a blog page, whose images belong to the page. Image references in a page must stay inside
the page's folder; remote (http) images are skipped and counted (nothing is downloaded).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".gif")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BLOG_EXTS = (".html", ".htm", ".md", ".markdown")


@dataclass(frozen=True)
class Source:
    kind: str  # "video" | "images" | "blog" | "unsupported" | "missing"
    path: str


def natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def discover(paths: list[Path], exclude: Path | None = None) -> list[Source]:
    """Sources under `paths`, never inside `exclude` (the stage's own output folder)."""
    out: list[Source] = []
    for p in paths:
        if not p.exists():
            out.append(Source("missing", str(p)))
        elif p.is_file():
            out.append(_file_source(p))
        else:
            out += _walk(p)
    if exclude is not None:
        skip = exclude.resolve()
        out = [s for s in out if not Path(s.path).resolve().is_relative_to(skip)]
    return out


def _file_source(p: Path) -> Source:
    ext = p.suffix.lower()
    kind = "video" if ext in VIDEO_EXTS else "blog" if ext in BLOG_EXTS else "unsupported"
    return Source(kind, str(p))


def _walk(folder: Path) -> list[Source]:
    children = sorted(folder.iterdir(), key=natural_key)
    files = [c for c in children if c.is_file() and not c.name.startswith(".")]
    # every file that is not an image of a sequence is a source of its own (unsupported ones are reported)
    out = [_file_source(f) for f in files if f.suffix.lower() not in IMAGE_EXTS]
    if any(f.suffix.lower() in IMAGE_EXTS for f in files):
        out.append(Source("images", str(folder)))
    if not any(f.suffix.lower() in BLOG_EXTS for f in files):  # a page's asset folders belong to the page
        for c in children:
            if c.is_dir() and not c.name.startswith("."):
                out += _walk(c)
    return out


def source_id(path: str) -> str:
    """Stable, readable, unique: the file or folder name plus 8 hex digits of the full path."""
    p = Path(path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", p.stem if p.is_file() else p.name).strip("-") or "source"
    return f"{stem[:48]}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"


def folder_images(folder: Path) -> list[Path]:
    return sorted((f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS), key=natural_key)


# ---- blogs ---------------------------------------------------------------------------------------------------

@dataclass
class BlogImage:
    ref: str  # as written in the page
    context: str  # the page text between the previous image and this one (the step the image illustrates)


class _HtmlPage(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.images: list[BlogImage] = []
        self._text: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in.append(tag)
        if tag == "img":
            a = dict(attrs)
            if a.get("src"):
                self.images.append(BlogImage(a["src"] or "", _clean(" ".join(self._text) + " " + (a.get("alt") or ""))))
                self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self._in:
            while self._in and self._in.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self._in and self._in[-1] in ("script", "style"):
            return
        if self._in and self._in[-1] in ("title", "h1") and not self.title:
            self.title = _clean(data)
        self._text.append(data)


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<img\s[^>]*src=[\"']([^\"']+)[\"'][^>]*>")


def _clean(text: str) -> str:
    return " ".join(re.sub(r"[#*_`>]+", " ", text).split())[:500]


def blog_images(page: Path) -> tuple[str, list[BlogImage]]:
    """(title, images in page order with the text that precedes each)."""
    text = page.read_text(encoding="utf-8", errors="replace")
    if page.suffix.lower() in (".html", ".htm"):
        parser = _HtmlPage()
        parser.feed(text)
        return parser.title, parser.images
    title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("# ")), "")
    images, last = [], 0
    for m in _MD_IMAGE.finditer(text):
        images.append(BlogImage(m.group(2) or m.group(3), _clean(text[last:m.start()] + " " + (m.group(1) or ""))))
        last = m.end()
    return title, images


def open_blog_image(page: Path, ref: str) -> Image.Image:
    """Decode one image reference of a page; ValueError for remote or out-of-folder references."""
    if ref.startswith("data:"):
        return Image.open(io.BytesIO(base64.b64decode(ref.split(",", 1)[1])))
    if re.match(r"^[a-z][a-z0-9+.-]*://", ref, re.I):
        raise ValueError(f"remote image {ref[:80]} (nothing is downloaded; save the page with its images)")
    root = page.parent.resolve()
    path = (root / ref.split("?", 1)[0].split("#", 1)[0]).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"image {ref!r} is outside the page's folder {root}")
    return Image.open(path)


def grouped_images(root: Path) -> tuple[dict[str, list[Path]], list[dict[str, str]]]:
    """`root/<group>/<image>` → {group: images in natural order} and the unreadable images as rejections
    (compose-pairs: a group is a subject category; destylize: a style)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder (expected {root}/<group>/<image>)")
    groups: dict[str, list[Path]] = {}
    rejected: list[dict[str, str]] = []
    for folder in sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=natural_key):
        for f in folder_images(folder):
            try:
                with Image.open(f) as im:
                    im.load()
            except (OSError, ValueError) as e:
                rejected.append({"path": str(f), "reason": "unreadable_image", "detail": f"{type(e).__name__}: {e}"})
                continue
            groups.setdefault(folder.name, []).append(f)
    return groups, rejected


def description(image: Path) -> str:
    """One-line description from `<image>.txt` next to it ("" when absent)."""
    txt = image.with_suffix(".txt")
    return " ".join(txt.read_text(encoding="utf-8").split()) if txt.is_file() else ""
