"""Reading generated HTML back in tests: elements, attributes and text as the browser's parser sees them."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    ids: tuple[str, ...]  # ids of this element and its open ancestors, innermost last


@dataclass
class Page:
    elements: list[Element] = field(default_factory=list)
    texts: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (text, ids of open ancestors)

    def find(self, tag: str, within: str | None = None) -> list[Element]:
        return [e for e in self.elements if e.tag == tag and (within is None or within in e.ids)]

    def text(self, within: str | None = None) -> list[str]:
        return [t for t, ids in self.texts if within is None or within in ids]

    @property
    def tags(self) -> set[str]:
        return {e.tag for e in self.elements}


VOID = {"img", "meta", "br", "hr", "input", "link", "source"}


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page, self.stack = Page(), []  # stack of (tag, id or None)

    def _ids(self) -> tuple[str, ...]:
        return tuple(i for _, i in self.stack if i)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag not in VOID:
            self.stack.append((tag, a.get("id")))
        self.page.elements.append(Element(tag, a, self._ids() + ((a["id"],) if tag in VOID and a.get("id") else ())))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        if data.strip():
            self.page.texts.append((data.strip(), self._ids()))


def parse(html: str) -> Page:
    p = _Parser()
    p.feed(html)
    p.close()
    return p.page


def local_refs(page: Page) -> list[str]:
    """Every src / href that points at a file (not an anchor, data: or http URL)."""
    refs = [e.attrs.get("src") or e.attrs.get("href") for e in page.elements if e.tag in ("img", "a", "source")]
    return [r for r in refs if r and not r.startswith("#") and not urlparse(r).scheme]


def assert_refs_exist(page: Page, folder: Path) -> list[str]:
    refs = local_refs(page)
    missing = [r for r in refs if not (folder / r).is_file()]
    assert not missing, f"{folder}: referenced files missing: {missing}"
    return refs
