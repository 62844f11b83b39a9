"""convertToUefi killed with SIGKILL (the CE VM losing power) in each of its phases -- while the guest edits the
overlay, while the child is written in scratch space, and when the child is complete on the share but not yet
renamed -- must leave nothing at the output name and the parent vDisk byte-identical, and a run after each must
succeed. `ce convert-to-uefi` runs as its own process group; ce.faults kills the group at the chosen point. The
sample depth (`make test`) kills at the rename only; `--fault-points=all` (`make test-faults`) kills in all three."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ce.faults import KILL_ENV, PHASE_ENV, TRACE_ENV
from tests.support.faults import DEPTH
from tests.support.smbserver import PASSWORD, USER

pytest.importorskip("nbd", reason="python3-libnbd (debian-packages.txt)")

pytestmark = pytest.mark.slow
SAMPLE = "win2019-vda2203-pvs-bios"
OUTPUT = "gold-uefi.avhdx"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert(samba, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ce.cli", "convert-to-uefi", samba.unc("share", "kill\\gold.vhdx"),
                           "--output", OUTPUT, "--port", str(samba.port), "--user", USER, "-q"],
                          capture_output=True, text=True, timeout=1500, start_new_session=True,
                          env={**os.environ, "CE_SMB_PASSWORD": PASSWORD, **env})


@pytest.fixture(scope="module")
def folder(samples, samba):
    path = samba.share_dir("share") / "kill"
    path.mkdir()
    shutil.copyfile(samples[SAMPLE].path, path / "gold.vhdx")
    return path


def test_killed_in_every_phase_leaves_nothing_and_a_rerun_succeeds(folder, samba, tmp_path):
    parent = folder / "gold.vhdx"
    before = (sha256(parent), parent.stat().st_mtime_ns)
    trace = tmp_path / "trace"

    def killed(**env) -> None:
        proc = convert(samba, **env)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert not (folder / OUTPUT).exists()
        assert (sha256(parent), parent.stat().st_mtime_ns) == before

    if DEPTH.every("points"):
        killed(**{PHASE_ENV: "child-write", TRACE_ENV: str(trace)})
        lines = trace.read_text().splitlines()
        calls = [int(m[1]) for line in lines if (m := re.match(r"(\d+) ", line))]
        apply_at = next(int(re.match(r"(\d+)", lines[i - 1])[1]) for i, line in enumerate(lines) if line == "# apply")
        assert "# child-write" in lines and max(calls) > apply_at + 10
        killed(**{KILL_ENV: str((apply_at + max(calls)) // 2)})        # half-way through the guest's edits
    killed(**{PHASE_ENV: "child-rename"})                              # complete on the share, not renamed
    done = convert(samba)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (folder / OUTPUT).exists() and not list(folder.glob("*.partial"))
    assert (sha256(parent), parent.stat().st_mtime_ns) == before
