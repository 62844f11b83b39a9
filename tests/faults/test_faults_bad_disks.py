"""Bad disks through the *writing* path: `ce run` of a prepare on each kind of bad input gives its own error code
and one clear line, and the input is byte-identical afterwards (test_inspect covers the read-only path)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ce import disks, registry
from ce.guest import Drive, Guest
from ce.plan import hive_path
from ce.registry import Hive, RegType

pytestmark = pytest.mark.slow
CE = [sys.executable, "-m", "ce.cli"]
FROM_SPECS = {"bad-linux": "not_windows", "bad-corrupt-software": "hive_corrupt", "bad-dirty-hive": "hive_dirty",
              "bad-dirty-ntfs": "ntfs_unclean", "bad-hibernated": "ntfs_hibernated",
              "bad-bitlocker": "bitlocker_encrypted", "bad-empty": "disk_blank", "bad-truncated": "disk_unreadable",
              "bad-two-roots": "multiple_windows_roots"}


def digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run_prepare(disk: str, tmp_path: Path) -> dict:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {
        "provisioningType": "Mcs", "xdReconfigure": [{"ParameterName": "controllers",
                                                      "ParameterValue": "ddc1.corp.example.com"}]}}))
    proc = subprocess.run([*CE, "run", "--json", "--job", str(job), disk], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)["error"]


def assert_clear(error: dict, code: str) -> None:
    assert error["code"] == code, error
    assert error["message"] and "\n" not in error["message"] and len(error["message"]) < 600


@pytest.mark.parametrize("name", sorted(FROM_SPECS))
def test_each_bad_sample_is_refused_with_its_code_and_left_untouched(samples, tmp_path, name):
    path = str(samples[name].path)
    before = digest(path)
    assert_clear(run_prepare(path, tmp_path), FROM_SPECS[name])
    assert digest(path) == before


def test_missing_and_zero_size_disks(tmp_path):
    assert_clear(run_prepare(str(tmp_path / "nope.vhdx"), tmp_path), "disk_not_found")
    empty = tmp_path / "empty.vhdx"
    empty.touch()
    assert_clear(run_prepare(str(empty), tmp_path), "disk_empty")
    assert empty.stat().st_size == 0


def test_read_only_source_is_refused_before_launching(samples, tmp_path):
    raw = tmp_path / "w2016.raw"
    disks.convert(str(samples["win2016-vda1912"].path), str(raw), "raw", src_fmt="qcow2")
    attach = subprocess.run(["losetup", "--read-only", "--find", "--show", str(raw)], capture_output=True, text=True)
    if attach.returncode != 0:
        pytest.skip(f"no loop device here: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        before = digest(device)
        error = run_prepare(device, tmp_path)
        assert_clear(error, "disk_read_only")
        assert "a dry run (ce plan) can still read it" in error["message"]
        assert digest(device) == before
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)


def test_unsupported_windows_release_is_refused(samples, tmp_path):
    """Server 2016 relabelled as 2012 R2 (build 9600), in a standalone copy."""
    disk = str(tmp_path / "w2012r2.qcow2")
    disks.convert(str(samples["win2016-vda1912"].path), disk, "qcow2", src_fmt="qcow2")
    with Guest([Drive(disk, "qcow2", readonly=False)]) as guest:
        root = guest.windows_root()
        guest.mount_windows(root, readonly=False)
        path = hive_path(guest, root, "SOFTWARE")
        local = registry.download_hive(guest, path, tmp_path)
        with Hive.open(local, write=True) as hive:
            key = r"Microsoft\Windows NT\CurrentVersion"
            hive.set(key, "ProductName", RegType.SZ, "Windows Server 2012 R2 Datacenter")
            hive.set(key, "CurrentBuild", RegType.SZ, "9600")
            hive.set(key, "CurrentBuildNumber", RegType.SZ, "9600")
            registry.commit_hive(guest, path, hive)
    before = digest(disk)
    error = run_prepare(disk, tmp_path)
    assert_clear(error, "windows_unsupported")
    assert error["message"].startswith("Windows Server 2012 R2 Datacenter (build 9600, x86_64) is not a Windows "
                                       "release prepare supports")
    assert digest(disk) == before
