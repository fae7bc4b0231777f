"""score_run over a run folder (Tables 1/2/4 path) and the aggregation rules, checked by hand."""

from __future__ import annotations

import json

import pytest
from conftest import make_client, make_run, rubric_reply, user_text

from loom.eval.aggregate import criterion_stats, summarize
from loom.eval.rubrics import TUTORIAL
from loom.eval.scoring import find_judge_records, score_run


def test_aggregation_by_hand():
    recs = [
        {"item_id": "a", "repeat": 0, "valid": True, "scores": {"TC": 4}},
        {"item_id": "a", "repeat": 1, "valid": True, "scores": {"TC": 5}},
        {"item_id": "b", "repeat": 0, "valid": True, "scores": {"TC": 1}},
        {"item_id": "b", "repeat": 1, "valid": False, "scores": None},
        {"item_id": "c", "repeat": 0, "valid": False, "scores": None},
        {"item_id": "c", "repeat": 1, "valid": False, "scores": None},
    ]
    s = criterion_stats(recs, "TC")
    assert s.per_item == {"a": 4.5, "b": 1.0}  # c has no valid repeat: excluded, not scored 0
    assert s.mean == pytest.approx(2.75) and s.n_valid == 2
    # per-repeat means: r0 = (4+1)/2 = 2.5, r1 = 5 → sample std = |5-2.5|/sqrt(2)
    assert s.std_over_repeats == pytest.approx(2.5 / 2**0.5)
    assert criterion_stats(recs, "TC", subset={"b", "c"}).mean == 1.0
    assert summarize(recs[:1], ["TC"])["TC"] == {"mean": 4.0, "n_valid": 1, "std_over_repeats": None}


def test_score_run_writes_records_and_summary(tmp_path, judge_server):
    # item r1 → (4,3,5); r2 → (2,2,1); r3 → always malformed → invalid
    def handler(body):
        t = user_text(body)
        if "making r1" in t:
            return 200, rubric_reply(4, 3, 5), 0.0
        if "making r2" in t:
            return 200, rubric_reply(2, 2, 1), 0.0
        return 200, "no idea", 0.0

    srv = judge_server(handler)
    run = make_run(tmp_path / "run", {k: ["a", "b", "c", "d"] for k in ("r1", "r2", "r3")})
    (tmp_path / "subset.txt").write_text("# header\nr1\n")
    s = score_run(
        run,
        TUTORIAL,
        make_client(srv, cache=tmp_path / "cache"),
        repeats=3,
        subset_file=tmp_path / "subset.txt",
    )
    assert s["criteria"]["TC"] == {"mean": 3.0, "n_valid": 2, "std_over_repeats": 0.0}
    assert s["criteria"]["NC"]["mean"] == pytest.approx(3.0) and s["criteria"]["IF"]["mean"] == 2.5
    assert s["subset"]["criteria"]["TC"]["mean"] == 4.0
    assert s["invalid_records"] == 3 and s["judge"]["model"] == "gpt-4o-2024-08-06"
    assert s["usage"]["requests"] == 3 + 3 + 6  # r3: one re-ask per repeat
    recs, judge = find_judge_records(run, TUTORIAL, None)
    assert judge == "gpt-4o-2024-08-06" and len(recs) == 9
    bad = [r for r in recs if not r["valid"]]
    assert all(r["scores"] is None and r["replies"] == ["no idea", "no idea"] for r in bad)
    summary_file = run / "scores" / "summary-tutorial__gpt-4o-2024-08-06.json"
    assert json.loads(summary_file.read_text())["num_items"] == 3
