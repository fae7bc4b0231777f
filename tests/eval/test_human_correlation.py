"""Human-ratings CSV import, two-level means, Krippendorff's α and the Pearson analysis (Tables 5–6)."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from loom.eval.correlation import correlate, pearson
from loom.eval.fsio import EvalInputError
from loom.eval.human import Rating, case_means, krippendorff_alpha_interval, load_human_csv, model_summary


def _write(tmp_path, text):
    p = tmp_path / "h.csv"
    p.write_text(text)
    return p


def test_long_and_wide_formats_agree(tmp_path):
    long = _write(
        tmp_path,
        "model,case_id,rater,criterion,score\nLoom,c1,r1,TC,4\nLoom,c1,r1,IF,5\nLoom,c1,r2,coherence,2\n",
    )
    wide = tmp_path / "w.csv"
    wide.write_text("model,case_id,rater,TC,IF\nLoom,c1,r1,4,5\nLoom,c1,r2,2,\n")
    assert sorted(load_human_csv(long), key=str) == sorted(load_human_csv(wide), key=str)


@pytest.mark.parametrize(
    "text,msg",
    [
        ("model,case,rater,TC\n", "missing column"),
        ("model,case_id,rater,criterion,score\nLoom,c1,r1,TC,7\n", "line 2: score 7 is outside 1-5"),
        (
            "model,case_id,rater,criterion,score\nLoom,c1,r1,TC,4\nLoom,c1,r1,XX,4\n",
            "line 3: unknown criterion 'XX'",
        ),
        (
            "model,case_id,rater,criterion,score\nLoom,c1,r1,TC,four\n",
            "line 2: score 'four' is not an integer",
        ),
        (
            "model,case_id,rater,criterion,score\nLoom,c1,r1,TC,4\nLoom,c1,r1,TC,5\n",
            "line 3: rater r1 rated Loom/c1/TC twice",
        ),
        (
            "model,case_id,rater,criterion,score\n,c1,r1,TC,4\n",
            "line 2: model, case_id and rater must all be non-empty",
        ),
    ],
)
def test_bad_rows_name_line_and_fix(tmp_path, text, msg):
    with pytest.raises(EvalInputError, match=msg):
        load_human_csv(_write(tmp_path, text))


def test_two_level_mean_by_hand():
    rs = [
        Rating("M", "c1", "r1", "TC", 5),
        Rating("M", "c1", "r2", "TC", 3),
        Rating("M", "c1", "r3", "TC", 4),
        Rating("M", "c2", "r1", "TC", 1),
    ]
    assert case_means(rs, "M", "TC") == {"c1": 4.0, "c2": 1.0}
    s = model_summary(rs, "M", "TC")
    assert s["mean"] == 2.5  # not the grand mean 13/4 = 3.25: c1's three raters do not outweigh c2
    assert s["n_cases"] == 2 and s["raters_per_case"] == 2.0


def test_krippendorff_alpha_by_hand():
    rs = [
        Rating("M", "u1", "a", "TC", 1),
        Rating("M", "u1", "b", "TC", 2),
        Rating("M", "u2", "a", "TC", 3),
        Rating("M", "u2", "b", "TC", 3),
        Rating("M", "u3", "a", "TC", 5),
    ]
    # u3 has one rating (unpairable); D_o = 2/4, D_e = 22/12 → α = 1 − 0.5/1.8333 = 0.72727
    assert krippendorff_alpha_interval(rs, "TC") == pytest.approx(1 - 0.5 / (22 / 12))
    agree = [Rating("M", u, r, "TC", v) for u, v in (("u1", 2), ("u2", 5)) for r in ("a", "b")]
    assert krippendorff_alpha_interval(agree, "TC") == 1.0
    assert krippendorff_alpha_interval(rs[:1], "TC") is None


def test_pearson_matches_formula_and_reports_p_and_n():
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
    mx, my = sum(x) / 5, sum(y) / 5
    r = sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(
        sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)
    )
    res = pearson(x, y)
    assert res["r"] == pytest.approx(r) == pytest.approx(0.8) and res["n"] == 5
    t = r * math.sqrt(3 / (1 - r * r))
    assert res["p"] == pytest.approx(2 * stats.t.sf(t, 3))


def test_constant_vector_is_undefined_not_zero():
    res = pearson([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    assert res["r"] is None and res["p"] is None and res["n"] == 4 and "constant" in res["note"]
    assert pearson([1.0, 2.0], [2.0, 1.0])["r"] is None  # n < 3


def test_correlate_pairs_cases_and_pools():
    judge = {
        "A": [
            {"item_id": c, "repeat": rep, "valid": True, "scores": {"TC": s + rep}}
            for c, s in (("c1", 1), ("c2", 2), ("c3", 3), ("c4", 5))
            for rep in (0, 1)
        ],
        "B": [{"item_id": c, "repeat": 0, "valid": True, "scores": {"TC": 2}} for c in ("c1", "c2", "c3")],
    }
    human = [Rating("A", c, "r1", "TC", v) for c, v in (("c1", 1), ("c2", 3), ("c3", 2))]
    human += [Rating("A", "c3", "r2", "TC", 4), Rating("A", "c9", "r1", "TC", 5)]  # c9 not judged: dropped
    human += [Rating("B", c, "r1", "TC", v) for c, v in (("c1", 1), ("c2", 2), ("c3", 3))]
    res = correlate(judge, human, ("TC",))
    a = res["per_model"]["A"]["TC"]
    # judge per case = mean of repeats: 1.5, 2.5, 3.5; human per case: 1, 3, 3 (c3 averaged over two raters)
    assert a["cases"] == ["c1", "c2", "c3"] and a["r"] == pytest.approx(
        stats.pearsonr([1.5, 2.5, 3.5], [1, 3, 3])[0]
    )
    assert res["per_model"]["B"]["TC"]["r"] is None  # judge gave 2 everywhere
    pooled = res["pooled"]["TC"]
    assert pooled["n"] == 6 and pooled["r"] == pytest.approx(
        stats.pearsonr([1.5, 2.5, 3.5, 2, 2, 2], [1, 3, 3, 1, 2, 3])[0]
    )
