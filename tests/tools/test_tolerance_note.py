"""A case that passes only under a looser tolerance than the default says which (the smoke run prints it)."""

import io

from loom.tools.check_reference import check, describe_tolerance


def test_pass_line_names_the_tolerance_it_needed(fixture_dir):
    out = io.StringIO()
    assert check(str(fixture_dir), only=["infer_edit", "infer_text"], stream=out)[:2] == (2, 0)
    edit, text = out.getvalue().splitlines()[:2]
    assert edit.endswith("PASS (tolerance: uint8 ±1 level on ≤ 1% of values)"), edit
    assert text.endswith("PASS"), text  # within the default 1e-4: nothing to add
    assert describe_tolerance({"atol": 1e-4, "rtol": 1e-4}) == "atol 0.0001 + rtol 0.0001·|ref|"
