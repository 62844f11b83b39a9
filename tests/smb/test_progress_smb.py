"""Progress of data work over SMB (issue 17): `ce convert` to a real smbd, run as a user runs it with
--machine-readable, reports the bytes it streams or uploads, climbing to the real size, with a rate."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.smbserver import PASSWORD, USER

MiB = 1 << 20


def convert_to_share(samba, folder, source, name: str, fmt: str) -> list[dict]:
    remote = f"smb://127.0.0.1:{samba.port}/share/{folder.name}/{name}"
    done = subprocess.run([sys.executable, "-m", "ce.cli", "convert", str(source), remote, "-O", fmt,
                           "--machine-readable"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "CE_SMB_PASSWORD": PASSWORD, "CE_SMB_USER": USER})
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]


def bytes_done(events: list[dict], message: str, size: int) -> list[int]:
    moved = [e for e in events if e["message"] == message]
    assert moved and {e["bytesTotal"] for e in moved} == {size}
    assert all(e["bytesPerSecond"] >= 0 for e in moved[1:])
    return [e["bytesDone"] for e in moved]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(16 * MiB) + bytes(8 * MiB) + os.urandom(8 * MiB))
    return path


def test_a_stream_into_a_container_on_the_share_reports_its_bytes(samba, folder, source):
    done = bytes_done(convert_to_share(samba, folder, source, "disk.vhdx", "vhdx"), "streaming into the container",
                      32 * MiB)
    assert len(done) > 2 and done == sorted(done) and done[-1] == 32 * MiB


def test_an_upload_after_a_conversion_reports_the_converted_files_bytes(samba, folder, source):
    events = convert_to_share(samba, folder, source, "disk.qcow2", "qcow2")
    converted = bytes_done(events, "converting", 32 * MiB)
    uploaded = bytes_done(events, "uploading", (folder / "disk.qcow2").stat().st_size)
    for done in (converted, uploaded):
        assert len(done) > 2 and done == sorted(done)
    assert converted[-1] == 32 * MiB and uploaded[-1] == (folder / "disk.qcow2").stat().st_size
