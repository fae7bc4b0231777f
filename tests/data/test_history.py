"""Sparse history sampler (Loom Eq. 4 / Eq. 6) pinned with numbers."""

import random

import pytest

from loom.data.history import (
    max_rotation_offset,
    sample_history,
    sample_rotation_offset,
    sparse_history_indices,
)


def test_paper_example_t5_kmax4():
    # appendix A.1: T = 5, K_max = 4: o = 0 -> {1,2,3,4}, o = 1 -> {2,3,4,5}
    assert sparse_history_indices(5, 4, 0) == [1, 2, 3, 4]
    assert sparse_history_indices(5, 4, 1) == [2, 3, 4, 5]
    assert max_rotation_offset(5, 4) == 1  # the paper's stated bound floor(5/5) = 1 would forbid o = 1


@pytest.mark.parametrize("t", range(0, 13))
@pytest.mark.parametrize("k_max", range(0, 6))
def test_formula_grid(t, k_max):
    for o in range(0, max_rotation_offset(t, k_max) + 2):
        got = sparse_history_indices(t, k_max, o)
        if k_max == 0 or t == 0:
            want = []
        elif t <= k_max:
            want = list(range(1, t + 1))  # full-context mode
        else:
            want = sorted({min(t, (i * t) // (k_max + 1) + o) for i in range(1, k_max + 1)})
        assert got == want
        assert got == sorted(set(got)) and all(1 <= k <= t for k in got)
        if t > k_max > 0 and o <= max_rotation_offset(t, k_max):
            assert len(got) == k_max  # in range, the offset never collides indices


@pytest.mark.parametrize("t,k_max,expected", [
    (1, 4, [1]), (4, 4, [1, 2, 3, 4]), (6, 2, [2, 4]), (7, 3, [1, 3, 5]), (10, 4, [2, 4, 6, 8]), (3, 1, [1]),
])
def test_deterministic_values(t, k_max, expected):
    assert sparse_history_indices(t, k_max) == expected


@pytest.mark.parametrize("t,k_max,bound", [(5, 4, 1), (6, 2, 2), (10, 4, 2), (7, 3, 2), (3, 3, 0), (9, 0, 0)])
def test_offset_bound(t, k_max, bound):
    assert max_rotation_offset(t, k_max) == bound
    if bound:  # the largest offset reaches the newest frame exactly
        assert sparse_history_indices(t, k_max, bound)[-1] == t


def test_sampled_offsets_cover_range_and_every_frame():
    rng = random.Random(0)
    seen_offsets = {sample_rotation_offset(10, 4, rng) for _ in range(200)}
    assert seen_offsets == {0, 1, 2}
    covered = set()
    for _ in range(200):
        covered |= set(sample_history(10, 4, rng))
    assert covered == set(range(2, 11))  # every history position is observed (appendix A.1's purpose)
    assert sample_history(10, 4, None) == [2, 4, 6, 8]  # inference: o = 0


def test_invalid_arguments():
    with pytest.raises(ValueError):
        sparse_history_indices(-1, 2)
    with pytest.raises(ValueError):
        sparse_history_indices(5, 2, offset=-1)
