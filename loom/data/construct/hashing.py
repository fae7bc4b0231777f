"""Perceptual hashes for near-duplicate checks: imagehash's pHash at 16×16 = 256 bits, compared by Hamming distance.

Why 256 bits: on 64 px shapes-world frames, consecutive tutorial states differ by as little as 4 of 64 bits at
the default 8×8 hash, the same as lossy-video noise (2); at 16×16 they differ by 10–98 of 256 bits while the
noise between copies of one held frame stays ≤ 2 (measured with libx264, yuv420p). Unrelated images differ by
about 128 bits (118–136 measured for noise vs shapes), so a scene cut is a distance near half the bits. The hash
is greyscale and low-frequency: pictures with the same layout are close whatever their colours (two garments of
one cut in different colours count as near-identical; `--dup-distance -1` turns the near-duplicate checks off).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .stage import need

HASH_SIZE = 16
BITS = HASH_SIZE * HASH_SIZE
DUP_DISTANCE = 8  # ≤ this many differing bits of 256: the same picture (re-encoded, resized, a held frame)
CUT_DISTANCE = 100  # ≥ this: an unrelated picture (a scene cut), not a step of the same tutorial


def phash(image: Image.Image) -> str:
    """64 hex digits."""
    return str(need("imagehash").phash(image.convert("RGB"), hash_size=HASH_SIZE))


def _bits(hexes: list[str]) -> np.ndarray:
    """[N, BITS // 8] uint8 rows."""
    return np.array([np.frombuffer(bytes.fromhex(h), dtype=np.uint8) for h in hexes], dtype=np.uint8).reshape(
        len(hexes), BITS // 8)


def distance(a: str, b: str) -> int:
    return int(bin(int(a, 16) ^ int(b, 16)).count("1"))


class HashIndex:
    """Hashes added one by one; `nearest(h)` is the closest earlier hash (vectorised over all of them)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._rows = np.zeros((0, BITS // 8), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.keys)

    def add_many(self, keys: list[str], hexes: list[str]) -> None:
        if hexes:
            self.keys += keys
            self._rows = np.concatenate([self._rows, _bits(hexes)])

    def nearest(self, h: str) -> tuple[str | None, int]:
        if not self.keys:
            return None, BITS + 1
        d = np.unpackbits(self._rows ^ _bits([h]), axis=1).sum(1)
        i = int(d.argmin())
        return self.keys[i], int(d[i])
