"""`make bench`'s disk script runs end to end (on tiny data: the figures themselves are not asserted)."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.support import ROOT

ROW_STARTS = ("convert", "ce convert", "SMB", "hash")


def test_bench_prints_every_comparison_with_a_ratio_per_size(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "disks.py"), "--size-mb", "8,16", "--repeat", "1",
                          "--data", "dense", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    assert re.search(r"CLI start-up \(ce convert --help\): \d+\.\d+ s", run.stdout)
    tables = run.stdout.split("== ")
    assert [t.splitlines()[0] for t in tables[1:]] == ["8 MiB", "16 MiB", "seconds per GiB (ce / reference) and "
                                                                          "ratio, per size"]
    for table in tables[1:3]:
        rows = [line for line in table.splitlines() if line.startswith(ROW_STARTS)]
        against_qemu = [row for row in rows if row.startswith("convert") and "qemu-img convert" in row]
        assert [row.split()[1] for row in against_qemu] == ["raw->vhdx", "raw->fixed", "raw->vmdk", "raw->qcow2",
                                                             "vhdx->raw"]
        # 5 pairs vs qemu-img, 4 vs cp, the whole CLI, 4 SMB rows, 3 hashes
        assert len(rows) == 17, rows
        ratios = [re.search(r"\s(\d+\.\d+)\s+\d+\.\d+-\d+\.\d+\s+\d+\.\d+\s+(MISSED|>=|info)", row) for row in rows]
        assert all(m and float(m.group(1)) > 0 for m in ratios), rows
    side = [line for line in tables[3].splitlines() if line.startswith(ROW_STARTS)]
    assert len(side) == 17 and all(len(re.findall(r"\d+\.\d+/\s*\d+\.\d+\s+\d+\.\d+", line)) == 2 for line in side)
    assert "SMB protection: ce SMB 3" in run.stdout + run.stderr
    assert list(tmp_path.iterdir()) == []
