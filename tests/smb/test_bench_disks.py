"""`make bench`'s disk script runs end to end (on tiny data: the figures themselves are not asserted)."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.support import ROOT


def test_bench_prints_every_comparison_with_a_ratio(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "disks.py"), "--size-mb", "8", "--repeat", "1",
                          "--dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines()
            if line.startswith(("convert", "SMB export", "SMB upload", "hash"))]
    # per data kind: 3 conversions, SMB export (signed, the unsigned info row and the qcow2 info row), upload alone,
    # 3 hashes
    assert len(rows) == 20
    for data in ("dense", "half-zero"):
        assert sum(f" {data} " in row for row in rows) == 10
    ratios = [re.search(r"\s(\d+\.\d+)\s+(MISSED|>=|info)", row) for row in rows]
    assert all(m and float(m.group(1)) > 0 for m in ratios), rows
    assert "SMB protection: ce SMB 3" in run.stdout + run.stderr
    assert list(tmp_path.iterdir()) == []
