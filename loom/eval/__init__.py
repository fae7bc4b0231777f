"""loom.eval: generate-then-score evaluation reproducing the Loom paper's Tables 1–6.

Generation (`harness.py`) writes one folder per benchmark item; every scorer (`judge.py` + `rubrics.py`,
`omnicontext.py`, `clip_score.py`) only reads those folders, and `tables.py` / `correlation.py` turn score files
into the paper's tables. Entry point: `python -m loom.eval <subcommand>` (see `evals/README.md`).
"""
