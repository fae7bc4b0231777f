"""Read a shapes-world canvas back into elements: per cell, the dominant palette colour and the shape class.

Built for blurry, noisy samples from a tiny model at 32 or 64 px, where a 7 px triangle blurs into a blob:
- each pixel gets the palette colour whose white-to-colour blend line it sits nearest, and an ink strength
  alpha in [0, 1] along that line; blurred edges of a red shape stay faint red instead of turning orange;
- ink *mass* (sum of alpha) is what we measure, because a blur conserves it: a cell holds an element when its
  dominant colour's mass reaches a fraction of the smallest clean shape;
- the shape is the nearest clean prototype in (fill ratio, vertical skew) space. Fill ratio = ink mass over the
  nominal side x side box (square 1, circle ~pi/4, triangle ~0.5); skew = third central moment of the rows, which a
  symmetric blur leaves unchanged and which only the bottom-heavy triangle has. Prototypes are measured by running
  this pipeline on exact renders at the image's own size, so nothing needs retuning per resolution.

Hidden appearance (mechanisms world, `perceive_appearance`): the paper tint is the tint nearest to the median colour
of the canvas border (shapes never reach it), and ink is then measured along paper-to-colour lines; the shape offset
is the offset nearest to the mean shift of the elements' ink centroids from clean centred renders (a symmetric blur
moves no centroid).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from loom.world.shapes import (
    BLACK,
    CELLS,
    OFFSETS,
    PALETTE,
    PAPERS,
    SHAPES,
    WHITE,
    Appearance,
    Color,
    Element,
    cell_box,
    render,
    shape_mask,
    shape_side,
)

INK_COLORS: tuple[str, ...] = (*PALETTE, "black")
BLACK_ID = len(PALETTE)  # index of black in INK_COLORS; outlines are ink but never an element colour
NO_INK = -1


@dataclass(frozen=True)
class PerceiveConfig:
    min_alpha: float = 0.2  # ink strength below which a pixel is background (2-3 sigma of sigma=20 RGB noise)
    max_residual: float = 90.0  # RGB distance from every blend line above which a pixel is unreadable
    min_mass: float = 0.4  # a cell needs this fraction of the smallest clean shape's ink mass in one colour


DEFAULT_CONFIG = PerceiveConfig()


def ink_strengths(image: np.ndarray, paper: Color = WHITE) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel and ink colour k (H x W x K): the strength alpha of k along the paper-to-k blend line and the
    RGB distance from that line. Alpha is capped at 1.5, not 1, so noise inside a solid shape averages out
    instead of always pulling its mass down."""
    rgb = np.asarray(image, dtype=np.float32)[..., :3]
    white = np.asarray(paper, dtype=np.float32)
    direction = np.asarray([*PALETTE.values(), BLACK], dtype=np.float32) - white  # K x 3
    offset = rgb[..., None, :] - white  # H x W x K x 3
    alpha = np.clip((offset * direction).sum(-1) / (direction**2).sum(-1), 0.0, 1.5)
    residual = np.linalg.norm(offset - np.minimum(alpha, 1.0)[..., None] * direction, axis=-1)
    return alpha, residual


def classify_pixels(image: np.ndarray, config: PerceiveConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Index into INK_COLORS per pixel (nearest blend line), NO_INK for background or unreadable pixels."""
    alpha, residual = ink_strengths(image)
    return _labels(alpha, residual, config)


def _labels(alpha: np.ndarray, residual: np.ndarray, config: PerceiveConfig) -> np.ndarray:
    best = residual.argmin(-1)
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    best_residual = np.take_along_axis(residual, best[..., None], -1)[..., 0]
    readable = (best_alpha >= config.min_alpha) & (best_residual <= config.max_residual)
    return np.where(readable, best, NO_INK)


def _mass(alpha: np.ndarray, residual: np.ndarray, color_id: int, config: PerceiveConfig) -> np.ndarray:
    """Ink mass map of one colour. Measured along that colour's own line, so pixels that noise pushed nearer
    a neighbouring colour (yellow/orange are 71 RGB apart) still count for the shape they belong to."""
    a, r = alpha[..., color_id], residual[..., color_id]
    return np.where((a >= config.min_alpha) & (r <= config.max_residual), a, 0.0)


def shape_features(mass: np.ndarray, side: int) -> tuple[float, float]:
    """(ink mass / side^2, row skew / |clean triangle's row skew|) of a non-negative mass map."""
    total = float(mass.sum())
    if total <= 0:
        return 0.0, 0.0
    rows = np.arange(mass.shape[0], dtype=np.float64)
    row_mass = mass.sum(axis=1)
    mean = (rows * row_mass).sum() / total
    skew = ((rows - mean) ** 3 * row_mass).sum() / total
    return total / side**2, float(skew) / _triangle_skew(side)


@lru_cache(maxsize=16)
def _triangle_skew(side: int) -> float:
    mask = shape_mask("triangle", side).astype(np.float64)
    rows, row_mass = np.arange(side), mask.sum(axis=1)
    mean = (rows * row_mass).sum() / row_mass.sum()
    return abs(float(((rows - mean) ** 3 * row_mass).sum() / row_mass.sum()))


@lru_cache(maxsize=16)
def shape_prototypes(size: int) -> dict[str, tuple[float, float]]:
    """Features of each clean shape at this canvas size, measured through `_mass` like real samples."""
    y0, x0, y1, x1 = cell_box("center", size)
    protos = {}
    for shape in SHAPES:
        alpha, residual = ink_strengths(render([Element("red", shape, "center")], size))
        protos[shape] = shape_features(
            _mass(alpha, residual, 0, DEFAULT_CONFIG)[y0:y1, x0:x1], shape_side(size)
        )
    return protos


def min_mass(size: int, config: PerceiveConfig = DEFAULT_CONFIG) -> float:
    return config.min_mass * min(float(shape_mask(s, shape_side(size)).sum()) for s in SHAPES)


def classify_shape(mass: np.ndarray, size: int) -> str:
    """Nearest prototype. Fill separates square from circle; skew separates the triangle even when blur has
    rounded its apex away. Skew is weighted 0.5 so its triangle gap (0.5) does not swamp fill's ~0.25 gaps."""
    fill, skew = shape_features(mass, shape_side(size))
    protos = shape_prototypes(size)
    return min(SHAPES, key=lambda s: (fill - protos[s][0]) ** 2 + (0.5 * (skew - protos[s][1])) ** 2)


def _read_cells(image: np.ndarray, config: PerceiveConfig, paper: Color
                ) -> list[tuple[Element, np.ndarray, tuple[int, int]]]:
    """(element, its ink mass map over the cell, the cell's top-left pixel) per cell that holds an element."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] < 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}")
    height, width = image.shape[:2]
    size = min(height, width)
    alpha, residual = ink_strengths(image, paper)
    labels = _labels(alpha, residual, config)
    threshold = min_mass(size, config)
    found = []
    for cell in CELLS:
        y0, x0, y1, x1 = cell_box(cell, height, width)
        patch = labels[y0:y1, x0:x1]
        ink = (patch >= 0) & (patch != BLACK_ID)
        # Dominant colour by pixel count of nearest-line labels; its mass then decides presence and shape.
        color_id = int(np.bincount(patch[ink], minlength=len(PALETTE)).argmax())
        mass = _mass(alpha[y0:y1, x0:x1], residual[y0:y1, x0:x1], color_id, config)
        if not ink.any() or mass.sum() < threshold:
            continue
        shape = classify_shape(mass, size)
        found.append((Element(INK_COLORS[color_id], shape, cell), mass, (y0, x0)))
    return found


def perceive(image: np.ndarray, config: PerceiveConfig = DEFAULT_CONFIG, paper: Color = WHITE
             ) -> frozenset[Element]:
    """The elements visible on a canvas: at most one per cell, in its dominant palette colour. `paper`: the
    background colour ink is measured from (white in the basic world; `perceive_appearance(image)` finds it)."""
    return frozenset(e for e, _, _ in _read_cells(image, config, paper))


def perceive_paper(image: np.ndarray) -> str:
    """The paper tint nearest to the median colour of the one-pixel canvas border."""
    img = np.asarray(image, dtype=np.float32)[..., :3]
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    median = np.median(border, axis=0)
    return min(PAPERS, key=lambda name: float(((median - np.asarray(PAPERS[name])) ** 2).sum()))


def _centroid(mass: np.ndarray) -> np.ndarray:
    ys, xs = np.indices(mass.shape)
    total = float(mass.sum())
    return np.array([(ys * mass).sum() / total, (xs * mass).sum() / total])


@lru_cache(maxsize=512)
def _clean_centroid(shape: str, cell: str, size: int) -> tuple[float, float]:
    """Ink centroid (within its cell) of a clean, centred shape: triangles are bottom-heavy."""
    (_, mass, _), = _read_cells(render([Element("red", shape, cell)], size), DEFAULT_CONFIG, WHITE)
    return tuple(_centroid(mass))


def perceive_appearance(image: np.ndarray, config: PerceiveConfig = DEFAULT_CONFIG
                        ) -> tuple[Appearance, frozenset[Element]]:
    """(hidden appearance, elements read on that paper). With no element on the canvas the offset is "centred"."""
    paper = perceive_paper(image)
    cells = _read_cells(image, config, PAPERS[paper])
    size = min(np.asarray(image).shape[:2])
    offset = "centred"
    if cells:
        shift = np.mean([_centroid(m) - np.asarray(_clean_centroid(e.shape, e.cell, size)) for e, m, _ in cells], 0)
        unit = max(1, size // 32)
        offset = min(OFFSETS, key=lambda k: float(((shift - unit * np.asarray(OFFSETS[k])) ** 2).sum()))
    return Appearance(paper, offset), frozenset(e for e, _, _ in cells)
