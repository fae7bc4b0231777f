"""Uniform sparse history sampling (Loom Eq. 4, appendix Eq. 6): which earlier frames condition frame t+1.

With t prior frames and a budget K_max the model sees the 1-based frames
    {⌊i·t/(K_max+1)⌋ + o : i = 1..K_max},
or all of them when t ≤ K_max ("full-context mode", appendix A.1). Training draws a rotation offset o per
instance; inference uses o = 0. K_max = 0 is the ablation "w/o Reference Sampling".

Offset bound (a documented deviation): the appendix states 0 ≤ o < ⌊T/(K_max+1)⌋, but its own example
(T = 5, K_max = 4: o = 0 → {1,2,3,4}, o = 1 → {2,3,4,5}) needs o = 1, which that bound forbids
(⌊5/5⌋ = 1 allows only o = 0). We use the largest offset that keeps every index ≤ t:
    0 ≤ o ≤ t − ⌊K_max·t/(K_max+1)⌋.
It reproduces the example and never indexes a frame that does not exist yet. Frames below ⌊t/(K_max+1)⌋
are still never drawn once t > K_max (t = 10, K_max = 4 covers 2..10), so the appendix's "every frame
position is observed" holds for the sampled positions, not for frame 1.
"""

from __future__ import annotations

import random


def _check(num_prior: int, k_max: int) -> None:
    if num_prior < 0 or k_max < 0:
        raise ValueError(f"num_prior and k_max must be ≥ 0, got num_prior={num_prior}, k_max={k_max}")


def max_rotation_offset(num_prior: int, k_max: int) -> int:
    """Largest training offset for t = num_prior prior frames: t − ⌊K_max·t/(K_max+1)⌋, and 0 in
    full-context mode (t ≤ K_max), where the offset is unused."""
    _check(num_prior, k_max)
    t = num_prior
    if k_max == 0 or t <= k_max:
        return 0
    return t - (k_max * t) // (k_max + 1)


def sparse_history_indices(num_prior: int, k_max: int, offset: int = 0) -> list[int]:
    """Sorted, unique 1-based frame numbers of the history for a target with `num_prior` frames before it.

    t ≤ k_max: all frames 1..t. Otherwise {min(t, ⌊i·t/(k_max+1)⌋ + offset) : i = 1..k_max} (Eq. 4, 6);
    for t > k_max the step t/(k_max+1) is ≥ 1, so the k_max indices are distinct and ≥ 1 before clipping.
    """
    _check(num_prior, k_max)
    if offset < 0:
        raise ValueError(f"rotation offset must be ≥ 0, got {offset}")
    t = num_prior
    if k_max == 0 or t == 0:
        return []
    if t <= k_max:
        return list(range(1, t + 1))
    return sorted({min(t, (i * t) // (k_max + 1) + offset) for i in range(1, k_max + 1)})


def sample_rotation_offset(num_prior: int, k_max: int, rng: random.Random) -> int:
    """Training offset o ~ U{0, …, max_rotation_offset(t, k_max)} (appendix A.1; bound as above)."""
    hi = max_rotation_offset(num_prior, k_max)
    return rng.randint(0, hi) if hi > 0 else 0


def sample_history(num_prior: int, k_max: int, rng: random.Random | None) -> list[int]:
    """History frames for one instance: a random rotation when `rng` is given (training), o = 0 otherwise."""
    offset = sample_rotation_offset(num_prior, k_max, rng) if rng is not None else 0
    return sparse_history_indices(num_prior, k_max, offset)
