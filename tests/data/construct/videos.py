"""Synthetic inputs for the dataset-construction tests: shapes-world tutorial states written as videos with PyAV
(holds, fades, duplicated and black frames), as image folders and as blog pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loom.world.shapes import Element, render

SIZE = 64
ELEMENTS = [
    Element("red", "circle", "top left"),
    Element("blue", "square", "top right"),
    Element("green", "triangle", "center"),
    Element("yellow", "circle", "bottom left"),
    Element("purple", "square", "bottom right"),
    Element("orange", "triangle", "top"),
]


def states(n: int = 6, elements: list[Element] = ELEMENTS) -> list[np.ndarray]:
    """Tutorial states 1..n: state k shows the first k elements."""
    return [render(elements[: k + 1], size=SIZE) for k in range(n)]


def black() -> np.ndarray:
    return np.zeros((SIZE, SIZE, 3), np.uint8)


def fade(a: np.ndarray, b: np.ndarray, n: int) -> list[np.ndarray]:
    """n frames strictly between a and b (a linear cross-fade)."""
    return [((1 - w) * a + w * b).round().astype(np.uint8) for w in np.linspace(0, 1, n + 2)[1:-1]]


def write_video(path: Path, frames: list[np.ndarray], fps: int = 8, codec: str = "libx264") -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def tutorial_video_frames(hold: int = 5) -> tuple[list[np.ndarray], dict[str, int]]:
    """2 black frames, 6 states held `hold` frames (state 2 has one duplicated extra frame), a 4-frame fade through
    black between states 3 and 4 (2 frames down, 1 black, 2 up… see below), a 5-frame fade out to 2 black frames.

    Returns the frames and the per-class frame counts the sampler must report."""
    s = states()
    frames: list[np.ndarray] = [black(), black()]
    for k, st in enumerate(s):
        frames += [st] * hold + ([st] if k == 1 else [])  # state 2: a duplicated frame
        if k == 2:  # dip to black between states 3 and 4
            frames += fade(st, black(), 3) + [black()] + fade(black(), s[3], 3)
    frames += fade(s[-1], black(), 5) + [black(), black()]
    return frames, {"black": 2 + 1 + 2, "fade": 3 + 3 + 5}


def write_empty_video(path: Path) -> Path:
    """A valid mp4 container with a video stream and no frames (a zero-length video)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        out.start_encoding()
    return path


def dominant_color(image) -> str:
    """Palette name of the most frequent non-white, non-black colour (routes fake VLM replies by source)."""
    from loom.world.shapes import PALETTE

    px = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3)
    names = list(PALETTE)
    ref = np.array([PALETTE[n] for n in names], dtype=float)
    d = ((px[:, None, :] - ref[None]) ** 2).sum(-1)
    near = d.min(1) < 40**2
    counts = np.bincount(d.argmin(1)[near], minlength=len(names))
    return names[int(counts.argmax())] if counts.any() else "none"
