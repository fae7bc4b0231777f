"""Tables and the `python -m loom.eval` entry points, end to end on tiny runs with the loopback judge."""

from __future__ import annotations

import json

import pytest
from conftest import make_run, rubric_reply, user_text

from loom.eval import tables as T
from loom.eval.__main__ import main
from loom.eval.rubrics import PAINTING


def _judge_args(srv, tmp_path):
    return [
        "--judge-base-url",
        srv.base_url,
        "--judge-api-key-env",
        "LOOM_TEST_KEY",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--judge-backoff",
        "0.001",
    ]


def test_table1_end_to_end_via_cli(tmp_path, judge_server, capsys):
    def handler(body):
        return 200, rubric_reply(5, 4, 3) if "making a" in user_text(body) else rubric_reply(3, 2, 1), 0.0

    srv = judge_server(handler)
    loom = make_run(tmp_path / "loom", {"a": ["Step 1: x", "Step 2: y"], "b": ["Step 1: z", "Step 2: w"]})
    bagel = make_run(tmp_path / "bagel", {"a": ["p", "q"], "b": ["r", "s"]}, text_source="given")
    for run in (loom, bagel):
        assert (
            main(
                [
                    "score",
                    "--run",
                    str(run),
                    "--bench",
                    "recipegen",
                    "--repeats",
                    "2",
                    *_judge_args(srv, tmp_path),
                ]
            )
            == 0
        )
    (loom / "scores" / "clip.json").write_text(json.dumps({"variants": {"step": {"mean": 0.2712}}}))
    human = tmp_path / "h.csv"
    human.write_text(
        "model,case_id,rater,TC,IF,NC\nLoom (ours),a,r1,5,4,4\nLoom (ours),a,r2,4,4,3\n"
        "Loom (ours),b,r1,2,2,2\n"
    )
    out = tmp_path / "tables"
    assert (
        main(
            [
                "table",
                "1",
                "--run",
                f"Loom (ours)={loom}",
                "--run",
                f"Bagel (ours)={bagel}",
                "--human",
                str(human),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    md = (out / "table1.md").read_text()
    # a → (5,4,3), b → (3,2,1): G = 4.00 / 3.00 / 2.00; H two-level: TC (4.5+2)/2 = 3.25, IF 3.00, NC (3.5+2)/2
    assert "| Loom (ours) | ours | 4.00 | 3.25 | 3.00 | 3.00 | 2.00 | 2.75 | 0.271 |" in md
    assert "| Bagel (ours) | ours | 4.00 | — | 3.00 | — | — | — | — |" in md  # given text → no NC
    assert "| Loom (paper) | paper | 4.25 | 4.15 | 3.75 | 3.35 | 4.70 | 4.30 | 0.269 |" in md
    tex = (out / "table1.tex").read_text()
    assert r"\begin{tabular}{llccccccc}" in tex and "Loom (ours) & ours & 4.00 & 3.25" in tex
    data = json.loads((out / "table1.json").read_text())
    assert data["data"]["ours"]["Loom (ours)"]["criteria"]["TC"]["n_valid"] == 2
    assert data["data"]["ours"]["Loom (ours)"]["criteria"]["TC"]["std_over_repeats"] == 0.0
    n_req = len(srv.requests)
    assert (
        main(
            [
                "score",
                "--run",
                str(loom),
                "--bench",
                "recipegen",
                "--repeats",
                "2",
                *_judge_args(srv, tmp_path),
            ]
        )
        == 0
    )
    assert len(srv.requests) == n_req  # rescoring is free
    assert (
        main(["correlate", "5", "--run", f"Loom (ours)={loom}", "--human", str(human), "--out", str(out)])
        == 0
    )
    assert "n/a (n=2)" in (out / "table5.md").read_text()


def test_table2_and_4_render(tmp_path, judge_server):
    srv = judge_server(lambda body: (200, rubric_reply(3, 4, 2, PAINTING.fields), 0.0))
    run = make_run(tmp_path / "full", {"p1": ["a", "b", "c", "d"]}, reference=True)
    assert (
        main(
            [
                "score",
                "--run",
                str(run),
                "--rubric",
                "painting",
                "--repeats",
                "1",
                *_judge_args(srv, tmp_path),
            ]
        )
        == 0
    )
    t4 = T.build_table4({"Full": run})
    assert t4.rows[-1] == ["Full", "ours", "3.00", "4.00", "2.00"] and t4.rows[4][0] == "Full"
    t2 = T.build_table2({"Loom (ours)": run})
    assert t2.rows[-1] == ["Loom (ours)", "ours", "3.00", "—", "4.00", "—", "2.00", "—"]


def test_table3_from_summary(tmp_path):
    run = tmp_path / "oc"
    (run / "scores").mkdir(parents=True)
    tasks = {
        t: {"overall": {"mean": v, "std": None}}
        for t, v in zip(T.TABLE3_TASKS, (8.0, 7.0, 6.0, 5.0, 4.0, 3.0))
    }
    (run / "scores" / "summary-omnicontext-official__gpt-4.1.json").write_text(
        json.dumps(
            {
                "tasks": tasks,
                "avg_dagger": {"mean": 5.5, "std": None},
                "avg_official_overall": {"mean": 5.9},
                "judge": {"model": "gpt-4.1"},
                "repeats": 1,
                "num_guessed": 2,
                "num_invalid": 0,
                "missing_outputs": [],
            }
        )
    )
    t = T.build_table3({"Loom (ours)": run})
    assert t.rows[-1] == ["Loom (ours)", "ours", "8.00", "7.00", "6.00", "5.00", "4.00", "3.00", "5.50"]
    assert "guessed scores 2" in t.notes[0]
    assert r"Avg$^\dagger$" in T.render_latex(t)
    with pytest.raises(Exception, match="expected one"):
        T.build_table3({"x": run}, mode="fixed")


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["table", "1", "--run", "no-equals-sign"]) == 2
    assert "expected LABEL=RUN_DIR" in capsys.readouterr().err
    assert main(["table", "1", "--run", f"X={tmp_path}"]) == 2
    assert "no tutorial judge scores" in capsys.readouterr().err
    assert main(["correlate", "6", "--run", f"X={tmp_path}"]) == 2
    assert "--human" in capsys.readouterr().err


def test_select_writes_header_and_ids(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "goal": "g", "steps": ["a"] * (4 if i % 2 else 3)}) + "\n"
            for i in range(10)
        )
    )
    assert (
        main(["select", "recipegen", "--data", str(src), "--n", "3", "--out", str(tmp_path / "ids.txt")]) == 0
    )
    from loom.eval.fsio import read_id_list

    ids = read_id_list(tmp_path / "ids.txt")
    assert len(ids) == 3 and all(int(i[1:]) % 2 == 1 for i in ids)  # only 4-step recipes
    assert "python -m loom.eval select recipegen" in (tmp_path / "ids.txt").read_text()


def test_dry_run_writes_every_table(tmp_path):
    main(["dry-run", "--out", str(tmp_path)])
    for n in range(1, 7):
        for ext in ("md", "tex", "json"):
            assert (tmp_path / "tables" / f"table{n}.{ext}").stat().st_size > 100
    t1 = json.loads((tmp_path / "tables/table1.json").read_text())
    assert [r[0] for r in t1["rows"][-2:]] == ["Loom (dry run)", "Bagel (dry run)"]
    assert t1["rows"][-1][6] == "—"  # the external-plan baseline has no NC
    from loom.eval.fakes import FAKE_JUDGE_MODEL

    # every table, every row of ours and every JSON says DRY RUN and names the fake judge, never the real one
    for n in range(1, 7):
        t = json.loads((tmp_path / "tables" / f"table{n}.json").read_text())
        assert t["caption"].startswith(f"DRY RUN (fake judge {FAKE_JUDGE_MODEL})")
        assert t["data"]["dry_run"]["judge"] == FAKE_JUDGE_MODEL
        ours = [r for r in t["rows"] if r[1] != "paper"]
        assert ours and all(r[1] == f"dry run, {FAKE_JUDGE_MODEL}" for r in ours)
        assert all("(ours)" not in r[0] for r in ours)
        assert "gpt-4" not in json.dumps(t["data"]["ours"]).lower()
        md = (tmp_path / "tables" / f"table{n}.md").read_text()
        assert md.startswith("**DRY RUN") and "| ours |" not in md and "- DRY RUN: " in md
    records = [json.loads(ln) for f in (tmp_path / "runs").rglob("*.jsonl") if "judge" in f.name
               for ln in f.read_text().splitlines() if ln.strip()]
    assert records and {r["judge_model"] for r in records if "judge_model" in r} == {FAKE_JUDGE_MODEL}
