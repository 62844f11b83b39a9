"""`bench/child.py` end to end on a tiny parent: its edits have the shapes it claims (whole blocks, parts of blocks,
zeros), and a run prints every row and the ratio and leaves nothing behind (its figures are not asserted)."""
from __future__ import annotations

import re
import subprocess
import sys

from bench.child import BLOCK, guest_edits
from tests.support import ROOT

MiB = 1 << 20


def test_the_edits_are_whole_blocks_parts_and_zeros_inside_the_disk():
    size = 64 * MiB
    edits = guest_edits(size, 0.25)
    whole = [e for e in edits if e.startswith("write -P") and e.endswith(f" {BLOCK}")]
    zeros = [e for e in edits if e.startswith("write -z")]
    partial = [e for e in edits if e not in whole and e not in zeros]
    assert whole and zeros and partial
    for command in edits:
        offset, length = map(int, command.split()[-2:])
        assert 0 <= offset and offset + length <= size
        assert offset // BLOCK == (offset + length - 1) // BLOCK, command     # a part stays inside its block
    assert guest_edits(size, 0.25) == edits                                       # the same shape every run


def test_the_child_bench_prints_its_rows_and_the_ratio(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "child.py"), "--size-mb", "16", "--changed", "0.4",
               "--repeat", "1", "--dir", str(tmp_path)]                   # 0.4: one block of each kind, and one more
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if re.search(r" s +\d+ MB/s \(", line)]
    assert [row[:36].strip() for row in rows] == [
        "ce write_child + upload_child", "of which write_child", "of which upload_child", "smbclient put (signed)",
        "info: smbclient put of the child", "info: SmbShare.upload, no read-back"]
    child = re.search(r"child: (\d+) bytes .*data (\d+) bytes .*changed extents (\d+) bytes", run.stdout)
    file_size, data, changed = map(int, child.groups())
    assert 0 < data == changed < file_size                # every changed byte is in the child, headers besides
    assert re.search(r"^ratio put/ce: \d+\.\d\d$", run.stdout, re.M)
    assert list(tmp_path.iterdir()) == []
