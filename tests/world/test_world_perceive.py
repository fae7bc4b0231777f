import numpy as np
import pytest
from PIL import Image, ImageFilter

from loom.world.perceive import classify_pixels, perceive, shape_prototypes
from loom.world.shapes import CELLS, COLORS, PALETTE, SHAPES, Element, render, sample_elements


def _degrade(img: np.ndarray, rng: np.random.Generator, blur: float, sigma: float) -> np.ndarray:
    """What a tiny CPU-trained model's samples look like: soft edges plus pixel noise."""
    out = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(blur)), dtype=np.float64)
    return np.clip(out + rng.normal(0.0, sigma, out.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [32, 64])
def test_every_single_element_reads_back(size: int) -> None:
    wrong = [
        (c, s, cell)
        for c in COLORS
        for s in SHAPES
        for cell in CELLS
        if perceive(render([Element(c, s, cell)], size)) != {Element(c, s, cell)}
    ]
    assert wrong == []


@pytest.mark.parametrize("size", [32, 64])
def test_prototypes_separate_the_three_shapes(size: int) -> None:
    protos = shape_prototypes(size)
    assert protos["square"][0] == pytest.approx(1.0)
    assert 0.72 < protos["circle"][0] < 0.85 and protos["circle"][1] == pytest.approx(0.0, abs=1e-9)
    assert 0.48 < protos["triangle"][0] < 0.53 and protos["triangle"][1] == pytest.approx(-1.0)


@pytest.mark.parametrize("size", [32, 64])
def test_blurry_noisy_canvases_read_back(size: int) -> None:
    rng = np.random.default_rng(size)
    exact = 0
    for _ in range(60):
        els = sample_elements(rng, int(rng.integers(1, 10)))
        exact += perceive(_degrade(render(els, size), rng, blur=0.8, sigma=20.0)) == frozenset(els)
    assert exact >= 58


def test_background_outlines_and_noise_hold_no_elements() -> None:
    rng = np.random.default_rng(0)
    for size in (32, 64):
        blank = np.full((size, size, 3), 255, dtype=np.uint8)
        assert perceive(blank) == frozenset()
        assert perceive(_degrade(blank, rng, blur=0.5, sigma=25.0)) == frozenset()
        outlines = render(sample_elements(rng, 9), size, outlined=True)
        assert perceive(outlines) == frozenset()


def test_faint_blend_of_red_is_red_not_orange() -> None:
    # 70% red over white lies on red's blend line; nearest-palette matching would call it orange.
    pixel = 0.7 * np.array(PALETTE["red"]) + 0.3 * 255
    labels = classify_pixels(pixel.reshape(1, 1, 3))
    assert COLORS[int(labels[0, 0])] == "red"
    assert int(classify_pixels(np.full((1, 1, 3), 250.0))[0, 0]) == -1  # near-white is background


def test_dominant_colour_wins_and_small_specks_are_ignored() -> None:
    img = render([Element("blue", "square", "center")], 64)
    img[24:27, 24:27] = PALETTE["red"]  # 9 red pixels inside the blue square
    img[2:4, 2:4] = PALETTE["green"]  # 4-pixel speck in an empty cell
    assert perceive(img) == {Element("blue", "square", "center")}
