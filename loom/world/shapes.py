"""The synthetic "shapes" world: palette, 3x3 cells, shape masks and canvas rendering.

Everything here is pure numpy and exact (no anti-aliasing), so the same element set always renders to the same
bytes and the judge can calibrate itself by rendering clean prototypes at any canvas size.

Hidden appearance (`Appearance`, the "mechanisms" world only, loom/world/program.py): a paper tint (one of a few
near-white backgrounds) and an offset of every shape within its cell (one pixel per 32 px of canvas, diagonally).
No text ever names them; a tutorial keeps one appearance on every frame. The default appearance (white paper,
centred shapes) renders exactly what the basic world always rendered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

Color = tuple[int, int, int]

PALETTE: dict[str, Color] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 60, 190),
    "orange": (240, 130, 30),
}
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
# Paper tints: near-white, every two at least 37 RGB levels apart in some channel, so the median colour of the
# canvas border (never inked) names one unambiguously (loom/world/perceive.py `perceive_appearance`).
PAPERS: dict[str, Color] = {
    "white": WHITE,
    "cream": (252, 240, 205),
    "mint": (215, 245, 215),
    "sky": (215, 230, 255),
}
# Shape offsets within the cell, in units of max(1, size // 32) pixels. The mechanisms world draws one of the two
# diagonal ones; "centred" is the basic world. Shapes keep a one-pixel margin to the canvas border at 32 and 64 px.
OFFSETS: dict[str, tuple[int, int]] = {"centred": (0, 0), "up left": (-1, -1), "down right": (1, 1)}

COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Reading order: the tutorial plan draws elements in this order, so the tuple order is part of the data format.
CELLS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
CELL_INDEX: dict[str, int] = {cell: i for i, cell in enumerate(CELLS)}
DEFAULT_SIZE = 64
SHAPE_FRACTION = 0.6  # shape side relative to a cell side


@dataclass(frozen=True, order=True)
class Element:
    """One filled shape of one palette colour in one cell; hashable so frames compare as sets."""

    color: str
    shape: str
    cell: str

    def __post_init__(self) -> None:
        if self.color not in PALETTE or self.shape not in SHAPES or self.cell not in CELL_INDEX:
            raise ValueError(f"unknown element {self.color!r} {self.shape!r} {self.cell!r}")

    def to_dict(self) -> dict[str, str]:
        return {"color": self.color, "shape": self.shape, "cell": self.cell}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> Element:
        return cls(color=d["color"], shape=d["shape"], cell=d["cell"])

    def moved_to(self, cell: str) -> Element:
        return Element(self.color, self.shape, cell)


@dataclass(frozen=True)
class Appearance:
    """Hidden per-tutorial look: paper tint and shape offset (names in PAPERS / OFFSETS)."""

    paper: str = "white"
    offset: str = "centred"

    def __post_init__(self) -> None:
        if self.paper not in PAPERS or self.offset not in OFFSETS:
            raise ValueError(f"unknown appearance {self.paper!r} {self.offset!r}")

    def to_dict(self) -> dict[str, str]:
        return {"paper": self.paper, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> Appearance:
        return cls(paper=d["paper"], offset=d["offset"])

    def shift(self, size: int) -> tuple[int, int]:
        """(dy, dx) in pixels on a size x size canvas."""
        unit = max(1, size // 32)
        dy, dx = OFFSETS[self.offset]
        return dy * unit, dx * unit


PLAIN = Appearance()


def reading_order(elements: Iterable[Element]) -> list[Element]:
    """Sort top-left first, row by row; the plan's step order."""
    return sorted(elements, key=lambda e: CELL_INDEX[e.cell])


def _bounds(length: int) -> list[int]:
    # Rounded thirds: 64 -> 0/21/43/64, 32 -> 0/11/21/32. Cells differ by at most one pixel.
    return [round(i * length / 3) for i in range(4)]


def cell_box(cell: str, height: int, width: int | None = None) -> tuple[int, int, int, int]:
    """Pixel bounds (y0, x0, y1, x1), end-exclusive, of a cell on a height x width canvas."""
    width = height if width is None else width
    row, col = divmod(CELL_INDEX[cell], 3)
    ys, xs = _bounds(height), _bounds(width)
    return ys[row], xs[col], ys[row + 1], xs[col + 1]


def shape_side(size: int) -> int:
    """Side of a drawn shape in pixels: the odd integer nearest to 0.6 of a cell.

    Odd sides put the shape's centre on a pixel centre, which keeps the circle symmetric and the triangle's fill
    ratio near 0.5 even at 32 px (side 7), where an even side would make circle and square nearly identical.
    """
    return max(3, 2 * round((SHAPE_FRACTION * size / 3 - 1) / 2) + 1)


@lru_cache(maxsize=64)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean side x side mask, a pixel is on when its centre lies inside the shape."""
    c = (np.arange(side) + 0.5) - side / 2  # pixel-centre offsets from the mask centre
    yy, xx = np.meshgrid(c, c, indexing="ij")
    if shape == "square":
        mask = np.ones((side, side), dtype=bool)
    elif shape == "circle":
        mask = yy**2 + xx**2 <= (side / 2) ** 2
    elif shape == "triangle":
        # Apex at the top centre, base along the bottom edge: half-width grows linearly with depth.
        depth = yy + side / 2
        mask = np.abs(xx) <= depth / 2
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask.setflags(write=False)
    return mask


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with at least one 4-neighbour outside it (the drawn contour)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def element_slice(cell: str, size: int, appearance: Appearance = PLAIN) -> tuple[slice, slice]:
    """Where a shape of `shape_side(size)` is pasted: centred on the cell's middle pixel, plus the offset."""
    y0, x0, y1, x1 = cell_box(cell, size)
    side = shape_side(size)
    dy, dx = appearance.shift(size)
    cy, cx = (y0 + y1 - 1) // 2 + dy, (x0 + x1 - 1) // 2 + dx
    top, left = cy - side // 2, cx - side // 2
    return slice(top, top + side), slice(left, left + side)


def blank_canvas(size: int = DEFAULT_SIZE, paper: Color = WHITE) -> np.ndarray:
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = paper
    return canvas


def draw_element(canvas: np.ndarray, element: Element, outlined: bool = False,
                 appearance: Appearance = PLAIN) -> np.ndarray:
    """Paint one element in place (filled in its colour, or as a black contour) and return the canvas."""
    size = canvas.shape[0]
    mask = shape_mask(element.shape, shape_side(size))
    rgb = BLACK if outlined else PALETTE[element.color]
    if outlined:
        mask = outline(mask)
    ys, xs = element_slice(element.cell, size, appearance)
    canvas[ys, xs][mask] = rgb
    return canvas


def render(elements: Iterable[Element], size: int = DEFAULT_SIZE, outlined: bool = False,
           appearance: Appearance = PLAIN) -> np.ndarray:
    """Canvas (size x size x 3, uint8) with the elements drawn; cells never overlap so order does not matter."""
    canvas = blank_canvas(size, PAPERS[appearance.paper])
    for element in elements:
        draw_element(canvas, element, outlined=outlined, appearance=appearance)
    return canvas


def render_swatch(color: str, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Style reference: a centred block of one palette colour covering the middle 3/4 of the canvas."""
    canvas = blank_canvas(size)
    margin = size // 8
    canvas[margin : size - margin, margin : size - margin] = PALETTE[color]
    return canvas


def sample_elements(rng: np.random.Generator, num: int, colors: Sequence[str] = COLORS) -> list[Element]:
    """`num` elements in distinct random cells with random colour and shape, in sampling (not reading) order."""
    if not 1 <= num <= len(CELLS):
        raise ValueError(f"num must be in [1, {len(CELLS)}], got {num}")
    cells = rng.choice(len(CELLS), size=num, replace=False)
    return [
        Element(colors[int(rng.integers(len(colors)))], SHAPES[int(rng.integers(len(SHAPES)))], CELLS[int(c)])
        for c in cells
    ]
