import math

import numpy as np
import pytest

from loom.world.shapes import (
    CELLS,
    PALETTE,
    SHAPES,
    Element,
    cell_box,
    element_slice,
    reading_order,
    render,
    render_swatch,
    sample_elements,
    shape_mask,
    shape_side,
)


def test_palette_is_the_spec_rgb() -> None:
    assert PALETTE == {
        "red": (220, 40, 40),
        "green": (40, 170, 60),
        "blue": (40, 80, 220),
        "yellow": (230, 200, 30),
        "purple": (150, 60, 190),
        "orange": (240, 130, 30),
    }
    assert CELLS[0] == "top left" and CELLS[4] == "center" and CELLS[8] == "bottom right"


@pytest.mark.parametrize("size", [32, 64])
def test_cells_tile_the_canvas(size: int) -> None:
    cover = np.zeros((size, size), dtype=int)
    for cell in CELLS:
        y0, x0, y1, x1 = cell_box(cell, size)
        assert 10 <= y1 - y0 <= size // 3 + 1 and 10 <= x1 - x0 <= size // 3 + 1
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()


@pytest.mark.parametrize(("size", "side"), [(32, 7), (64, 13)])
def test_shape_fill_ratios(size: int, side: int) -> None:
    assert shape_side(size) == side  # odd, ~0.6 of a cell
    fill = {s: shape_mask(s, side).mean() for s in SHAPES}
    assert fill["square"] == 1.0
    assert abs(fill["circle"] - math.pi / 4) < 0.035
    assert abs(fill["triangle"] - 0.5) < 0.015
    tri = shape_mask("triangle", side)
    assert tri[0].sum() == 1 and tri[-1].sum() == side  # apex up, base down


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_sit_centred_inside_their_cell(size: int) -> None:
    for cell in CELLS:
        y0, x0, y1, x1 = cell_box(cell, size)
        ys, xs = element_slice(cell, size)
        assert y0 < ys.start and ys.stop < y1 and x0 < xs.start and xs.stop < x1
        assert abs((ys.start - y0) - (y1 - ys.stop)) <= 1 and abs((xs.start - x0) - (x1 - xs.stop)) <= 1


def test_render_paints_exact_colours_on_white() -> None:
    els = [Element("red", "square", "top left"), Element("blue", "circle", "center")]
    img = render(els, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    ys, xs = element_slice("center", 64)
    assert tuple(img[(ys.start + ys.stop) // 2, (xs.start + xs.stop) // 2]) == (40, 80, 220)
    colours, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
    by_colour = {tuple(int(v) for v in c): int(n) for c, n in zip(colours, counts)}
    assert by_colour == {(255, 255, 255): 64 * 64 - 169 - 137, (220, 40, 40): 169, (40, 80, 220): 137}
    outlined = render(els, 64, outlined=True)
    assert set(map(tuple, outlined.reshape(-1, 3).tolist())) == {(0, 0, 0), (255, 255, 255)}
    swatch = render_swatch("green", 32)
    assert (swatch[4:28, 4:28] == (40, 170, 60)).all() and (swatch[:4] == 255).all()


def test_sampling_is_seeded_and_reading_order_sorts() -> None:
    a = sample_elements(np.random.default_rng(3), 6)
    b = sample_elements(np.random.default_rng(3), 6)
    assert a == b and len({e.cell for e in a}) == 6
    assert [CELLS.index(e.cell) for e in reading_order(a)] == sorted(CELLS.index(e.cell) for e in a)
    with pytest.raises(ValueError):
        Element("pink", "circle", "top")
