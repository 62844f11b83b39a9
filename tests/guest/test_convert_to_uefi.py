"""convertToUefi end to end against a real smbd: the BIOS/MBR PVS samples as vDisks on the share, converted to a
differencing child beside them, checked with readers that are not ce's.

The merged disk (parent + child) is read by dissect.hypervisor; its GPT by `sgdisk -v` / `-p`; the ESP's FAT32 by
mtools; the BCD on it by regipy with a device parser of the tests' own (tests/support/bcdread.py); the SYSTEM hive
(MountedDevices) by `ntfscat` + regipy; the parent's sha256 and time before and after. Appliance launches (13-25 s
each here): a dry run over the server, two conversions (System Reserved reused as the ESP; Windows alone, a new ESP
in added space), and `ce inspect` of one merged disk; a VHD that cannot grow and a GPT disk are refused from the first sector,
before any launch.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ce.errors import AlreadyUefi, NoRoomForGpt
from ce.step import execute, step_types
from tests.support.smbserver import PASSWORD, USER
from tests.support.steps import Recorder

pytest.importorskip("dissect.hypervisor.disk.vhdx", reason="dissect.hypervisor (the test extra)")
pytest.importorskip("nbd", reason="python3-libnbd (debian-packages.txt)")
from regipy.registry import RegistryHive  # noqa: E402

from tests.support.bcdread import BOOTMGR, element, parse_partition_device  # noqa: E402
from tests.support.vhdreaders import dissect_merged  # noqa: E402

pytestmark = pytest.mark.slow
CE = [sys.executable, "-m", "ce.cli"]
SYSRES, SINGLE, UEFI = "win2019-vda2203-pvs-bios", "win10-vda2402-pvs-bios", "win2019-vda2203-pvs"
MiB = 1 << 20
ESP_TYPE, BASIC_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
STEP = step_types()["convertToUefi"]


def run(params: dict, **extra) -> dict:
    document = execute(STEP, STEP.parse({**params, **extra}), Recorder()).model_dump(mode="json")
    json.dumps(document)
    return document


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mbr_partitions(path: Path, fmt: str, work: Path) -> list[tuple[int, int]]:
    """(start, end) sectors of a disk's MBR partitions, read by sfdisk from a raw copy (no ce code)."""
    raw = work / f"{path.name}.mbr.raw"
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(raw)], check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    raw.unlink()
    return [(p["start"], p["start"] + p["size"] - 1) for p in table["partitions"]]


def gpt_rows(raw: Path) -> dict[int, dict]:
    out = subprocess.run(["sgdisk", "-v", str(raw)], capture_output=True, text=True)
    assert "No problems found" in out.stdout, out.stdout + out.stderr
    rows = {}
    for number in range(1, 5):
        info = subprocess.run(["sgdisk", "-i", str(number), str(raw)], capture_output=True, text=True).stdout
        if "Partition GUID code" not in info:
            continue
        rows[number] = {"type": re.search(r"GUID code: (\S+)", info)[1], "guid": re.search(r"unique GUID: (\S+)", info)[1],
                        "start": int(re.search(r"First sector: (\d+)", info)[1]),
                        "end": int(re.search(r"Last sector: (\d+)", info)[1])}
    disk = re.search(r"Disk identifier \(GUID\): (\S+)",
                     subprocess.run(["sgdisk", "-p", str(raw)], capture_output=True, text=True).stdout)[1]
    return {"disk": disk, **rows}


def partition_file(raw: Path, start: int, end: int, out: Path) -> Path:
    with open(raw, "rb") as src, open(out, "wb") as dst:
        src.seek(start * 512)
        remaining = (end - start + 1) * 512
        while remaining:
            block = src.read(min(remaining, 8 * MiB))
            dst.write(block)
            remaining -= len(block)
    return out


@pytest.fixture(scope="module")
def store(samples, samba, tmp_path_factory):
    """The share's PVS store: the System Reserved sample as VHDX, the single-partition one as VHD (as built) and as
    VHDX."""
    folder = samba.share_dir("share") / "store"
    folder.mkdir()
    shutil.copyfile(samples[SYSRES].path, folder / "sysres.vhdx")
    shutil.copyfile(samples[SINGLE].path, folder / "single.vhd")
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "vhdx", str(samples[SINGLE].path),
                    str(folder / "single.vhdx")], check=True)
    subprocess.run(["qemu-img", "convert", "-f", samples[UEFI].format, "-O", "vhdx", str(samples[UEFI].path),
                    str(folder / "uefi.vhdx")], check=True)
    return folder


def params(samba, name: str, output: str, **extra) -> dict:
    return {"inputStorageLocation": samba.location(folder="store"), "inputImageFilename": name,
            "outputImageFilename": output, **extra}


@pytest.fixture(scope="module")
def converted(store, samba, tmp_path_factory):
    """The System Reserved vDisk converted (parent fingerprints taken before), and its merged disk as raw."""
    work = tmp_path_factory.mktemp("uefi")
    parent = store / "sysres.vhdx"
    before = (sha256(parent), parent.stat().st_mtime_ns)
    mbr = mbr_partitions(parent, "vhdx", work)
    result = run(params(samba, "sysres.vhdx", "sysres-uefi.avhdx"))
    raw = work / "merged.raw"
    raw.write_bytes(dissect_merged(store / "sysres-uefi.avhdx"))
    return {"result": result, "before": before, "mbr": mbr, "raw": raw, "work": work, "parent": parent}


def test_parent_is_untouched(converted):
    parent = converted["parent"]
    assert (sha256(parent), parent.stat().st_mtime_ns) == converted["before"]
    assert not list(parent.parent.glob("*.partial"))


def test_gpt_keeps_every_partition_where_it_was(converted):
    result, rows = converted["result"], gpt_rows(converted["raw"])
    assert result["error"] is None
    (sysres_start, sysres_end), (win_start, win_end) = converted["mbr"]
    assert (rows[1]["start"], rows[1]["end"], rows[1]["type"]) == (sysres_start, sysres_end, ESP_TYPE)
    assert (rows[2]["start"], rows[2]["end"], rows[2]["type"]) == (win_start, win_end, BASIC_TYPE)
    assert 3 not in rows
    uefi = result["facts"]["uefi"]
    assert uefi["esp"]["reused"] and uefi["grownBytes"] == MiB
    assert converted["raw"].stat().st_size == uefi["diskBytes"] == result["facts"]["child"]["virtualSize"]
    assert result["facts"]["child"]["blocks"]["not_present"] > 0             # only the changes are in the child


def test_esp_is_fat32_with_the_boot_files(converted):
    rows, raw = gpt_rows(converted["raw"]), converted["raw"]
    esp = f"{raw}@@{rows[1]['start'] * 512}"
    boot_sector = raw.open("rb")
    boot_sector.seek(rows[1]["start"] * 512)
    assert boot_sector.read(90)[82:90] == b"FAT32   "
    listing = subprocess.run(["mdir", "-b", "-/", "-i", esp, "::/EFI"], capture_output=True, text=True,
                             check=True).stdout.upper()
    for name in ("EFI/BOOT/BOOTX64.EFI", "EFI/MICROSOFT/BOOT/BOOTMGFW.EFI", "EFI/MICROSOFT/BOOT/BCD",
                 "EFI/MICROSOFT/BOOT/MEMTEST.EFI", "EFI/MICROSOFT/BOOT/EN-US/BOOTMGFW.EFI.MUI"):
        assert f"::/{name}" in listing
    bcd = converted["work"] / "BCD"
    subprocess.run(["mcopy", "-n", "-i", esp, "::/EFI/Microsoft/Boot/BCD", str(bcd)], check=True)
    hive = RegistryHive(str(bcd))
    loader = element(hive, BOOTMGR, 0x23000003)
    assert parse_partition_device(element(hive, BOOTMGR, 0x11000001)) == {"partition": rows[1]["guid"],
                                                                          "disk": rows["disk"]}
    for device in (0x11000001, 0x21000001):
        assert parse_partition_device(element(hive, loader, device)) == {"partition": rows[2]["guid"],
                                                                         "disk": rows["disk"]}
    assert element(hive, loader, 0x12000002) == "\\Windows\\system32\\winload.efi"
    assert element(hive, loader, 0x22000002) == "\\Windows"


def test_drive_letters_follow_the_gpt_partitions(converted):
    rows, work = gpt_rows(converted["raw"]), converted["work"]
    volume = partition_file(converted["raw"], rows[2]["start"], rows[2]["end"], work / "windows.ntfs")
    system = work / "SYSTEM"
    with open(system, "wb") as out:
        subprocess.run(["ntfscat", str(volume), "/Windows/System32/config/SYSTEM"], stdout=out, check=True)
    values = {v.name: v.value for v in RegistryHive(str(system)).get_key("\\MountedDevices").iter_values()}
    expected = b"DMIO:ID:" + uuid.UUID(rows[2]["guid"]).bytes_le
    assert bytes.fromhex(values["\\DosDevices\\C:"]) == expected
    assert all(not bytes.fromhex(v).startswith(bytes(4)) for v in values.values())
    assert any(bytes.fromhex(v) == b"DMIO:ID:" + uuid.UUID(rows[1]["guid"]).bytes_le for v in values.values())


def test_inspect_reports_uefi_and_gpt(converted):
    proc = subprocess.run([*CE, "inspect", "--json", str(converted["raw"])], capture_output=True, text=True,
                          timeout=900)
    report = json.loads(proc.stdout)
    assert (report["firmware"], report["partitionTable"]) == ("uefi", "gpt"), proc.stderr
    boot = report["boot"]
    assert (boot["esp"]["device"], boot["esp"]["filesystem"], boot["esp"]["label"]) == ("/dev/sda1", "vfat", "SYSTEM")
    assert boot["store"] == {"device": "/dev/sda1", "path": "/EFI/Microsoft/Boot/BCD"}
    loader = next(e for e in boot["entries"] if e["default"])
    assert (loader["type"], loader["path"]) == ("osloader", "\\Windows\\system32\\winload.efi")
    assert loader["device"]["partition"] == loader["osdevice"]["partition"] == report["os"]["rootDevice"]
    assert not [w for w in report["warnings"] if w["code"].startswith("boot_config")]


def test_windows_alone_gets_a_new_esp_in_added_space(store, samba, tmp_path):
    proc = subprocess.run([*CE, "convert-to-uefi", samba.unc("share", "store\\single.vhdx"), "--output",
                           "single-uefi.vhdx", "--port", str(samba.port), "--user", USER, "--json"],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "CE_SMB_PASSWORD": PASSWORD})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    uefi = result["facts"]["uefi"]
    assert not uefi["esp"]["reused"] and uefi["grownBytes"] == 101 * MiB
    raw = tmp_path / "single.raw"
    raw.write_bytes(dissect_merged(store / "single-uefi.vhdx"))
    rows = gpt_rows(raw)
    ((win_start, win_end),) = mbr_partitions(store / "single.vhdx", "vhdx", tmp_path)
    assert (rows[1]["start"], rows[1]["end"], rows[1]["type"]) == (win_start, win_end, BASIC_TYPE)
    assert rows[2]["type"] == ESP_TYPE and rows[2]["start"] > win_end
    assert (rows[2]["end"] - rows[2]["start"] + 1) * 512 == 100 * MiB


@pytest.mark.parametrize("name, output, refusal, message", [
    ("single.vhd", "single-uefi.avhd", NoRoomForGpt, "may not grow"),       # a VHD child keeps its size
    ("uefi.vhdx", "uefi-again.avhdx", AlreadyUefi, "GPT partition table already"),
])
def test_refused_from_the_first_sector_before_a_launch(store, samba, name, output, refusal, message):
    names = sorted(p.name for p in store.iterdir())
    recorder = Recorder()
    with pytest.raises(refusal, match=message):
        execute(STEP, STEP.parse(params(samba, name, output)), recorder)
    assert "starting the appliance" not in [message for _, message in recorder.reports]
    assert sorted(p.name for p in store.iterdir()) == names


def test_over_the_server(store, samba, server, api):
    """The step over the API (gunicorn, mutual TLS, a token): a dry run -- whose NBD export runs in a process the
    step's worker starts -- lists the conversion, and a VHD that cannot grow fails with its code; nothing is written."""
    from tests.server.test_server import new_id, post_step, wait_terminal
    names = sorted(p.name for p in store.iterdir())
    dry, refused = new_id(), new_id()
    assert post_step(server, api, "convertToUefi", {**params(samba, "sysres.vhdx", "api.avhdx"), "dryRun": True},
                     dry).status_code == 202
    assert post_step(server, api, "convertToUefi", params(samba, "single.vhd", "api.avhd"), refused).status_code == 202
    failed = wait_terminal(server, api, refused, timeout=300)
    assert (failed["status"], failed["error"]["code"]) == ("failed", "uefi_no_room")
    planned = wait_terminal(server, api, dry, timeout=1200)
    assert planned["status"] == "succeeded", planned["error"]
    plan = planned["result"]
    kinds = [c["kind"] for c in plan["changes"]]
    assert kinds[0] == "gpt_conversion" and "filesystem_create" in kinds and kinds[-1] == "disk_write"
    files = {c["path"] for c in plan["changes"] if c["kind"] == "file_write"}
    assert {"\\EFI\\Microsoft\\Boot\\BCD", "\\EFI\\Boot\\bootx64.efi", "\\EFI\\Microsoft\\Boot\\bootmgfw.efi",
            "\\EFI\\Microsoft\\Boot\\en-US\\bootmgfw.efi.mui"} <= files
    assert any(c["kind"] == "registry_set" and c["key"] == "MountedDevices" for c in plan["changes"])
    assert plan["facts"]["uefi"]["esp"]["reused"] is True
    assert sorted(p.name for p in store.iterdir()) == names
