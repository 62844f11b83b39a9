"""`make bench`'s disk script runs end to end (on tiny data: the figures themselves are not asserted)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_prints_every_comparison_with_a_ratio(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "disks.py"), "--size-mb", "8", "--repeat", "1",
                          "--dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith(("convert", "SMB export", "hash"))]
    assert len(rows) == 14
    for data in ("dense", "half-zero"):
        assert sum(f" {data} " in row for row in rows) == 7
    assert all(float(row.split()[-3 if "MISSED" not in row else -4]) > 0 for row in rows)
    assert list(tmp_path.iterdir()) == []
