"""The paper's derived claims, recomputed from its own table numbers (eval-protocols §0)."""

from __future__ import annotations

import pytest

from loom.eval import paper as P
from loom.eval.correlation import critical_r


def test_loom_beats_anole_by_2_62():
    crits = ("TC", "IF", "NC")
    assert P.mean_g(P.TABLE1, "Loom (paper)", crits) == pytest.approx(4.2333, abs=1e-4)
    assert P.mean_g(P.TABLE1, "Anole", crits) == pytest.approx(1.6167, abs=1e-4)
    assert round(P.mean_g(P.TABLE1, "Loom (paper)", crits) - P.mean_g(P.TABLE1, "Anole", crits), 2) == 2.62


def test_text_setting_percentages_use_gain_over_scale():
    tc = P.gain_over_scale(P.g(P.TABLE1, "Loom (paper)", "TC"), P.g(P.TABLE1, "Bagel", "TC"))
    if_ = P.gain_over_scale(P.g(P.TABLE1, "Loom (paper)", "IF"), P.g(P.TABLE1, "Bagel", "IF"))
    assert (tc, if_) == (pytest.approx(0.57), pytest.approx(0.44))
    assert (tc + if_) / 2 == pytest.approx(0.505)  # "over 50%" vs Bagel
    crits = ("TC", "IF", "NC")
    vs_anole = P.gain_over_scale(
        P.mean_g(P.TABLE1, "Loom (paper)", crits), P.mean_g(P.TABLE1, "Anole", crits)
    )
    assert vs_anole == pytest.approx(0.5233, abs=1e-4)  # "over 51%" vs Anole


def test_image_setting_3_48_vs_2_82():
    crits = ("TC", "RF", "SA")
    assert round(P.mean_gh(P.TABLE2, "Loom (paper)", crits), 2) == 3.48
    assert round(P.mean_gh(P.TABLE2, "Doubao", crits), 2) == 2.82
    assert P.mean_gh(P.TABLE2, "Loom (paper)", crits) == pytest.approx(3.4833, abs=1e-4)


def test_image_setting_plus_62_and_51_are_ratios():
    loom_tc, doubao_tc = P.mean_gh(P.TABLE2, "Loom (paper)", ("TC",)), P.mean_gh(P.TABLE2, "Doubao", ("TC",))
    loom_rf, doubao_rf = P.mean_gh(P.TABLE2, "Loom (paper)", ("RF",)), P.mean_gh(P.TABLE2, "Doubao", ("RF",))
    assert (loom_tc, doubao_tc, loom_rf, doubao_rf) == pytest.approx((3.40, 2.10, 4.00, 2.65))
    assert round(P.ratio_gain(loom_tc, doubao_tc), 2) == 0.62
    assert round(P.ratio_gain(loom_rf, doubao_rf), 2) == 0.51


def test_table4_plus_38_and_54_vs_bagel():
    full, base = P.TABLE4["Full"], P.TABLE4["Baseline"]
    assert P.gain_over_scale(full["TC"], base["TC"]) == pytest.approx(0.38)
    assert P.gain_over_scale(full["RF"], base["RF"]) == pytest.approx(0.54)


def test_around_44_percent_is_not_reproducible():
    g_only = (P.gain_over_scale(3.15, 1.25) + P.gain_over_scale(3.85, 1.15)) / 2
    gh = (
        P.gain_over_scale(P.mean_gh(P.TABLE2, "Loom (paper)", ("TC",)), P.mean_gh(P.TABLE2, "Bagel", ("TC",)))
        + P.gain_over_scale(
            P.mean_gh(P.TABLE2, "Loom (paper)", ("RF",)), P.mean_gh(P.TABLE2, "Bagel", ("RF",))
        )
    ) / 2
    assert round(g_only, 2) == 0.46 and round(gh, 2) == 0.49  # neither is 0.44


def test_avg_dagger_is_mean_of_six_columns_for_every_row():
    for model, (cols, printed) in P.TABLE3.items():
        assert len(cols) == 6
        assert abs(P.avg_dagger(cols) - printed) <= 0.0051, model
    assert P.avg_dagger(P.TABLE3["GPT-4o"][0]) == pytest.approx(8.75)
    assert P.avg_dagger(P.TABLE3["Loom (paper)"][0]) == pytest.approx(8.135)


def test_granularity_suggests_20_cases():
    cells = [
        v
        for row in P.TABLE1.values()
        for k, cell in row.items()
        if k != "CLIP"
        for v in cell
        if v is not None
    ]
    cells += [v for row in P.TABLE2.values() for cell in row.values() for v in cell if v is not None]
    assert all(abs(v * 20 - round(v * 20)) < 1e-9 for v in cells)  # every cell is k/20
    assert any(abs(v * 50 - round(v * 50)) > 1e-9 for v in cells)  # 4.35 cannot be a mean of 50 integers


def test_significance_thresholds():
    assert critical_r(20) == pytest.approx(0.444, abs=1e-3)
    assert critical_r(50) == pytest.approx(0.279, abs=1e-3)
    t6 = [v for row in P.TABLE6.values() for v in row.values() if v is not None]
    assert max(t6) < critical_r(20)  # no Table 6 value is significant at n = 20
