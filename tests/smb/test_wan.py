"""SMB through bench/wanproxy.py, the delay proxy of the WAN bench: an export and an upload that cross it keep their
bytes (several 8 MiB writes in flight at once, each delayed), and `bench/wan.py` runs end to end on tiny data (its
figures are not asserted)."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

from bench.wanproxy import DelayProxy
from ce import disks
from ce.smb import Credentials, SmbShare
from ce.step import StepContext, execute, step_types
from tests.support import ROOT
from tests.support.smbserver import PASSWORD, USER

MiB = 1 << 20
ONE_WAY = 0.003


def test_an_export_through_a_delaying_link_stores_the_disk_unchanged(samba, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CE_SCRATCH", str(tmp_path))
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(20 * MiB) + bytes(8 * MiB) + os.urandom(6 * MiB))
    export = step_types()["export"]
    with DelayProxy(("127.0.0.1", samba.port), ONE_WAY) as proxy:
        params = export.parse({"disk": str(disk), "SmbDiskName": "far", "hashDisk": True, "outputStorageLocation": {
            "Location": samba.unc("share", folder.name), "port": proxy.port,
            "credentials": {"username": USER, "password": PASSWORD}}})
        result = execute(export, params, StepContext()).model_dump(mode="json")
    assert [p.name for p in folder.iterdir()] == ["far.vhdx"]
    assert result["facts"]["hashes"]["sha256"] == hashlib.sha256(disk.read_bytes()).hexdigest()
    assert disks.compare(disk, folder / "far.vhdx", fmt_a="raw", fmt_b="vhdx")


def test_an_upload_through_a_delaying_link_is_byte_identical(samba, folder, tmp_path):
    local = tmp_path / "file.bin"
    local.write_bytes(os.urandom(30 * MiB + 12345))
    with DelayProxy(("127.0.0.1", samba.port), ONE_WAY) as proxy, \
            SmbShare(samba.unc("share", folder.name), Credentials(USER, PASSWORD), port=proxy.port) as share:
        stored = share.upload(local, "file.bin")
    assert stored.sent == local.stat().st_size
    assert hashlib.sha256((folder / "file.bin").read_bytes()).digest() == hashlib.sha256(local.read_bytes()).digest()


def test_the_wan_bench_prints_a_row_per_delay(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "wan.py"), "--size-mb", "4", "--repeat", "1",
                          "--delays", "0,2", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if re.match(r"\s*\d+ ms ", line)]
    assert [row.split()[0] for row in rows] == ["0", "2"]
    for row in rows:
        assert len(re.findall(r"MB/s", row)) == 3 and re.search(r"\d+\.\d\d\s+\d+\.\d\d$", row), row
    assert list(tmp_path.iterdir()) == []
