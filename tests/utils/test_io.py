"""Atomic writes keep the umask's permissions (mkstemp's 0600 used to survive the rename)."""

import os
import stat

from loom.utils.io import atomic_write_json


def test_atomic_write_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o022)
        atomic_write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))
