"""`python -m loom.tools.check_reference FIXTURE_DIR [--case NAME] [--backend sdpa|flex|flash] [--verbose]`

Runs every case of a reference fixture (cases.json + cases.safetensors + a BAGEL-layout release) through loom
and prints one line per case — max absolute error and PASS / FAIL / SKIP — then `N passed, M failed`.
Exit status 0 only if nothing failed. This output format is a stable contract used by tests and CI.
"""

from __future__ import annotations

import argparse
import sys
import traceback

import torch

from .fixture import Fixture, compare
from .reference_cases import RUNNERS, ModelContext, run_images

DEFAULT_ATOL = 1e-4  # the fixture's float tolerance: atol 1e-4 + rtol 1e-4·|ref|


def describe_tolerance(tol: dict | None) -> str:
    """A fixture tolerance entry in words, e.g. 'uint8 ±1 level on ≤ 1% of values'."""
    tol = tol or {}
    if tol.get("exact"):
        return "exact"
    if "max_abs_diff" in tol:
        return (f"uint8 ±{tol['max_abs_diff']} level{'s' if tol['max_abs_diff'] != 1 else ''} on "
                f"≤ {tol['max_mismatch_fraction']:.0%} of values")
    return f"atol {tol.get('atol', 1e-4):g} + rtol {tol.get('rtol', 1e-4):g}·|ref|"


def _runner(name: str):
    if name in RUNNERS:
        return RUNNERS[name]
    try:  # inference cases belong to loom.infer
        from ..infer.reference import RUNNERS as INFER_RUNNERS
    except ImportError:
        return None
    return INFER_RUNNERS.get(name)


def check(root: str, only: list[str] | None = None, backend: str = "sdpa", verbose: bool = False,
          stream=sys.stdout) -> tuple[int, int, int]:
    fx = Fixture.load(root)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ctx = ModelContext(root)
    ctx.model.attn_backend = backend
    passed = failed = skipped = 0
    names = ["images", *fx.cases] if not only else only
    for name in names:
        runner = run_images if name == "images" else _runner(name)
        if runner is None:
            print(f"{name:<16} max_err        -  SKIP (no runner in this build)", file=stream)
            skipped += 1
            continue
        try:
            got = runner(fx, ctx)
        except Exception as e:  # a crash is a failure of that case, not of the tool
            print(f"{name:<16} max_err      inf  FAIL ({type(e).__name__}: {e})", file=stream)
            if verbose:
                traceback.print_exc(file=stream)
            failed += 1
            continue
        case = fx.cases.get(name, {})
        keys = case.get("expected", []) + case.get("debug", []) if name != "images" else list(got)
        worst, worst_tol, ok, notes = 0.0, None, True, []
        for key in keys:
            if key not in got:
                if key in case.get("expected", []):
                    ok = False
                    notes.append(f"{key}: not produced")
                continue
            err, good, note = compare(got[key], fx.tensors[key], fx.tolerance(key))
            if err > worst:
                worst, worst_tol = err, fx.tolerance(key)
            if not good:
                ok = False
                notes.append(f"{key}: err {err:.3g} {note}".strip())
            if verbose:
                print(f"    {key:<52} {err:.3e} {'ok' if good else 'BAD'} {note}", file=stream)
        status = "PASS" if ok else "FAIL"
        detail = "" if ok else " (" + "; ".join(notes[:4]) + (" …" if len(notes) > 4 else "") + ")"
        if ok and worst > DEFAULT_ATOL:  # a pass that needed a looser tolerance says which one
            detail = f" (tolerance: {describe_tolerance(worst_tol)})"
        print(f"{name:<16} max_err {worst:.3e}  {status}{detail}", file=stream)
        passed, failed = passed + ok, failed + (not ok)
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""), file=stream)
    return passed, failed, skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loom.tools.check_reference", description=__doc__.splitlines()[0])
    ap.add_argument("fixture_dir")
    ap.add_argument("--case", action="append", help="run only this case (repeatable)")
    ap.add_argument("--backend", default="sdpa", choices=["sdpa", "flex", "flash"])
    ap.add_argument("--verbose", "-v", action="store_true", help="print every tensor's error")
    args = ap.parse_args(argv)
    _, failed, _ = check(args.fixture_dir, args.case, args.backend, args.verbose)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
