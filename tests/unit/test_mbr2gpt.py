"""MBR → GPT as MBR2GPT does it (ce.windows.mbr2gpt, ce.windows.mounted_devices): the two Windows layouts that
matter, 4Kn, each refusal, the WinRE type mapping, MountedDevices against hand-computed bytes, and a planned GPT
written with sgdisk over a real MBR disk file: `sgdisk -v` clean, sfdisk reads back the plan, every old partition's
bytes unchanged. No appliance. (4Kn is covered by the layout tests only: a disk file has 512-byte sectors.)"""
from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest
import sh

from ce.errors import (
    AlreadyUefi, DynamicDisk, ExtendedPartitions, InvalidPartitionTable, NoRoomForGpt, NoSystemPartition,
    TooManyPartitions, UefiUnsupportedWindows, UnknownPartitionType,
)
from ce.guest.partitions import PartitionEntry, PartitionTable
from ce.windows.mbr2gpt import check, check_windows, mounted_devices_problems, mounted_devices_to_gpt, plan_layout

MIB = 1 << 20
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BASIC = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
WINRE = "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"
SIGNATURE = 0x5EED1234


def mbr(*parts: tuple[int, int, str, bool]) -> PartitionTable:
    """Partitions as (start sector, end sector, MBR type, active), numbered 1..n."""
    return PartitionTable(label="msdos", partitions=[
        PartitionEntry(number=n, start=s, end=e, type=t, bootable=a) for n, (s, e, t, a) in enumerate(parts, 1)])


def system_reserved(disk_sectors: int, ss: int = 512, reserved_mib: int = 100) -> PartitionTable:
    """System Reserved (active) from 1 MiB, then Windows to the last sector: Windows Setup's BIOS layout."""
    first, reserved = MIB // ss, reserved_mib * MIB // ss
    return mbr((first, first + reserved - 1, "07", True), (first + reserved, disk_sectors - 1, "07", False))


def windows_alone(disk_sectors: int, ss: int = 512) -> PartitionTable:
    return mbr((MIB // ss, disk_sectors - 1, "07", True))


# ---------------------------------------------------------------- layouts

def test_system_reserved_becomes_the_esp_and_the_disk_grows_for_the_backup_gpt():
    sectors = 10 * 1024 * MIB // 512
    old = system_reserved(sectors)
    layout = plan_layout(old, sector_size=512, disk_sectors=sectors, windows_partition=2)
    esp, windows = layout.table.partitions
    assert [(p.start, p.end) for p in layout.table.partitions] == [(p.start, p.end) for p in old.partitions]
    assert (esp.type, windows.type, layout.esp_number, layout.esp_reused) == (ESP, BASIC, 1, True)
    assert layout.grow_bytes == MIB and layout.disk_sectors == sectors + MIB // 512   # 33 sectors, rounded to 1 MiB
    assert layout.partition_guid_by_offset == {MIB: esp.guid, 101 * MIB: windows.guid}
    assert layout.table.label == "gpt" and len({esp.guid, windows.guid, layout.table.disk_guid}) == 3


def test_windows_alone_gets_a_new_esp_after_it():
    sectors = 10 * 1024 * MIB // 512
    layout = plan_layout(windows_alone(sectors), sector_size=512, disk_sectors=sectors, windows_partition=1)
    windows, esp = layout.table.partitions
    assert (windows.start, windows.end, windows.type) == (2048, sectors - 1, BASIC)
    assert (esp.number, esp.start, esp.end, esp.type) == (2, sectors, sectors + 100 * MIB // 512 - 1, ESP)
    assert layout.grow_bytes == 101 * MIB and not layout.esp_reused
    assert esp.end + 33 < layout.disk_sectors


def test_free_space_at_the_end_is_used_without_growing():
    sectors = 1024 * MIB // 512
    old = mbr((2048, 600 * MIB // 512 - 1, "07", True))
    layout = plan_layout(old, sector_size=512, disk_sectors=sectors, windows_partition=1)
    assert layout.grow_bytes == 0 and layout.disk_sectors == sectors
    assert layout.table.partitions[1].start == 600 * MIB // 512


def test_4kn_needs_a_260_mib_esp():
    sectors = 10 * 1024 * MIB // 4096
    small = plan_layout(system_reserved(sectors, 4096), sector_size=4096, disk_sectors=sectors, windows_partition=2)
    assert not small.esp_reused and small.grow_bytes == 261 * MIB
    esp = small.table.partitions[-1]
    assert (esp.number, (esp.end - esp.start + 1) * 4096) == (3, 260 * MIB)
    big = plan_layout(system_reserved(sectors, 4096, reserved_mib=300), sector_size=4096, disk_sectors=sectors,
                      windows_partition=2)
    assert big.esp_reused and big.grow_bytes == MIB          # backup GPT: 5 sectors of 4 KiB


@pytest.mark.parametrize("reserved_mib, reusable, reused", [
    (99, True, False), (100, True, True), (1024, True, True), (1025, True, False), (500, False, False)])
def test_system_partition_reuse_follows_mbr2gpt_sizes(reserved_mib, reusable, reused):
    sectors = 20 * 1024 * MIB // 512
    layout = plan_layout(system_reserved(sectors, reserved_mib=reserved_mib), sector_size=512,
                         disk_sectors=sectors, windows_partition=2, system_partition_reusable=reusable)
    assert layout.esp_reused is reused
    assert layout.table.partitions[0].type == (ESP if reused else BASIC)


def test_winre_partition_maps_to_the_recovery_type_with_its_attributes():
    sectors = 20 * 1024 * MIB // 512
    old = mbr((2048, 206847, "07", True), (206848, sectors - 1024 * MIB // 512 - 1, "07", False),
              (sectors - 1024 * MIB // 512, sectors - 1, "27", False))
    layout = plan_layout(old, sector_size=512, disk_sectors=sectors, windows_partition=2)
    assert [p.type for p in layout.table.partitions] == [ESP, BASIC, WINRE]
    assert layout.attributes == {3: 0x8000000000000001}


def test_fixed_guids_and_type_map():
    sectors = 1024 * MIB // 512
    old = mbr((2048, 206847, "83", True), (206848, sectors - 1, "07", False))
    with pytest.raises(UnknownPartitionType):
        check(old, sector_size=512, disk_sectors=sectors)
    linux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    fixed = {n: f"{n}" * 8 + "-0000-4000-8000-000000000000" for n in (1, 3)}
    layout = plan_layout(old, sector_size=512, disk_sectors=sectors, windows_partition=2,
                         system_partition_reusable=False, type_map={0x83: linux},
                         disk_guid="dddddddd-0000-4000-8000-000000000000", partition_guids=fixed)
    assert [p.type for p in layout.table.partitions] == [linux, BASIC, ESP]
    assert layout.table.disk_guid.startswith("DDDDDDDD")
    assert layout.table.partitions[0].guid.startswith("11111111") and layout.table.partitions[2].guid.startswith("3")


# ---------------------------------------------------------------- refusals

SECTORS = 1024 * MIB // 512


@pytest.mark.parametrize("table, error", [
    (PartitionTable(label="gpt", partitions=[]), AlreadyUefi),
    (mbr((2048, 4095, "07", True), (4096, 8191, "07", False), (8192, 9999, "07", False), (10000, 20000, "07", False)),
     TooManyPartitions),
    (mbr((2048, 4095, "07", True), (4096, SECTORS - 1, "05", False)), ExtendedPartitions),
    (PartitionTable(label="msdos", partitions=[PartitionEntry(number=1, start=2048, end=4095, type="07", bootable=True),
                                               PartitionEntry(number=5, start=6144, end=8191, type="07")]),
     ExtendedPartitions),
    (mbr((63, 2047, "42", True), (2048, SECTORS - 1, "42", False)), DynamicDisk),
    (mbr((2048, SECTORS - 1, "07", False)), NoSystemPartition),
    (mbr((2048, 4095, "07", True), (4096, SECTORS - 1, "07", True)), NoSystemPartition),
    (mbr((2048, 4095, "07", True), (4096, SECTORS - 1, "82", False)), UnknownPartitionType),
    (mbr((32, SECTORS - 1, "07", True)), NoRoomForGpt),
    (mbr((2048, 8191, "07", True), (8000, SECTORS - 1, "07", False)), InvalidPartitionTable),
    (mbr((2048, SECTORS, "07", True)), InvalidPartitionTable),
    (mbr((2048, 4095, "zz", True)), InvalidPartitionTable),
])
def test_refusals(table, error):
    with pytest.raises(error) as refused:
        plan_layout(table, sector_size=512, disk_sectors=SECTORS, windows_partition=1)
    assert refused.value.code == error.code


def test_no_room_when_the_disk_may_not_grow():
    with pytest.raises(NoRoomForGpt, match="backup GPT"):
        check(system_reserved(SECTORS), sector_size=512, disk_sectors=SECTORS, can_grow=False)
    with pytest.raises(NoRoomForGpt, match="EFI system partition"):
        plan_layout(mbr((2048, SECTORS - 50 * MIB // 512, "07", True)), sector_size=512, disk_sectors=SECTORS,
                    windows_partition=1, can_grow=False)
    fits = plan_layout(mbr((2048, SECTORS - 102 * MIB // 512, "07", True)), sector_size=512, disk_sectors=SECTORS,
                       windows_partition=1, can_grow=False)
    assert fits.grow_bytes == 0


def test_unknown_windows_partition_number_is_refused():
    with pytest.raises(InvalidPartitionTable):
        plan_layout(system_reserved(SECTORS), sector_size=512, disk_sectors=SECTORS, windows_partition=3)


@pytest.mark.parametrize("arch, build", [("i386", 19045), ("x86_64", 9600), ("x86_64", 7601)])
def test_windows_refusals(arch, build):
    with pytest.raises(UefiUnsupportedWindows) as refused:
        check_windows(arch=arch, build=build, product_name="Windows 8.1")
    assert refused.value.code == "uefi_unsupported_windows"


def test_supported_windows_pass():
    for build in (10240, 14393, 17763, 20348, 26100):
        check_windows(arch="x86_64", build=build)


# ---------------------------------------------------------------- MountedDevices

def test_mounted_devices_of_this_disk_become_gpt_ids():
    windows_guid, reserved_guid = "92251336-0835-4065-99ED-059530652677", "910557F3-B9FE-4538-B5F1-CDFF998707F1"
    c_drive = bytes.fromhex("3412ed5e" "0000500600000000")        # signature 0x5EED1234, offset 101 MiB
    reserved = bytes.fromhex("3412ed5e" "0000100000000000")       # offset 1 MiB
    other_disk = bytes.fromhex("78563412" "0000100000000000")
    cdrom = "\\??\\IDE#CdRomQEMU_DVD-ROM#5&1".encode("utf-16-le")
    already_gpt = b"DMIO:ID:" + bytes(range(16))
    values = {"\\DosDevices\\C:": c_drive, "\\??\\Volume{aaaa}": c_drive, "\\??\\Volume{bbbb}": reserved,
              "\\DosDevices\\D:": other_disk, "\\DosDevices\\E:": cdrom, "\\??\\Volume{cccc}": already_gpt,
              "\\DosDevices\\F:": b"\x01\x02\x03", "\\DosDevices\\G:": bytes.fromhex("3412ed5e" "0000000100000000"),
              "\\??\\Volume{dddd}": b"DMIO:ID:" + bytes(3)}
    guids = {101 * MIB: windows_guid, MIB: reserved_guid}
    changes = mounted_devices_to_gpt(values, SIGNATURE, guids)
    windows_id = b"DMIO:ID:" + bytes.fromhex("36132592" "3508" "6540" "99ed" "059530652677")
    reserved_id = b"DMIO:ID:" + bytes.fromhex("f3570591" "feb9" "3845" "b5f1" "cdff998707f1")
    assert changes == {"\\DosDevices\\C:": (c_drive, windows_id), "\\??\\Volume{aaaa}": (c_drive, windows_id),
                       "\\??\\Volume{bbbb}": (reserved, reserved_id)}
    problems = mounted_devices_problems(values, SIGNATURE, guids)
    assert problems == ["\\DosDevices\\F:: 3 bytes, too short for a device id",
                        f"\\DosDevices\\G:: names offset {16 * MIB} of this disk, where no partition starts",
                        "\\??\\Volume{dddd}: a GPT-form id of 11 bytes (24 expected)"]


# ---------------------------------------------------------------- the planned GPT, written

def write_mbr(raw, table: PartitionTable, signature: int) -> None:
    lines = ["label: dos", f"label-id: 0x{signature:08x}", "unit: sectors"]
    lines += [f"start={p.start}, size={p.end - p.start + 1}, type={p.type}" + (", bootable" if p.bootable else "")
              for p in table.partitions]
    sh.sfdisk("--quiet", "--no-reread", "--no-tell-kernel", str(raw), _in="\n".join(lines) + "\n")


def fill_partitions(raw, table: PartitionTable) -> None:
    """Distinct bytes at each partition's first, middle and last sectors: what a shifted table would misplace."""
    with open(raw, "r+b") as f:
        for p in table.partitions:
            for sector in (p.start, (p.start + p.end) // 2, p.end):
                f.seek(sector * 512)
                f.write(hashlib.sha256(f"{p.number}:{sector}".encode()).digest() * 16)


def partition_hashes(raw, table: PartitionTable) -> dict[int, str]:
    hashes = {}
    with open(raw, "rb") as f:
        for p in table.partitions:
            f.seek(p.start * 512)
            digest = hashlib.sha256()
            for _ in range(p.start, p.end + 1, 2048):
                digest.update(f.read(min(2048, p.end + 1 - _) * 512))
            hashes[p.number] = digest.hexdigest()
    return hashes


def write_gpt(raw, layout) -> None:
    """The planned table written by sfdisk (sgdisk sleeps a second per write; it verifies instead)."""
    lines = ["label: gpt", f"label-id: {layout.table.disk_guid}", "unit: sectors"]
    for p in layout.table.partitions:
        attributes = layout.attributes.get(p.number, 0)
        names = (["RequiredPartition"] if attributes & 1 else []) + [f"GUID:{bit}" for bit in range(48, 64)
                                                                      if attributes >> bit & 1]
        lines.append(f"start={p.start}, size={p.end - p.start + 1}, type={p.type}, uuid={p.guid}, name=\"{p.name}\""
                     + (f", attrs=\"{' '.join(names)}\"" if names else ""))
    sh.sfdisk("--quiet", "--no-reread", "--no-tell-kernel", str(raw), _in="\n".join(lines) + "\n")


@pytest.mark.parametrize("name", ["system_reserved", "windows_alone", "with_winre"])
def test_planned_gpt_is_writable_without_moving_data(tmp_path, name):
    sectors = 112 * MIB // 512
    old = {"system_reserved": system_reserved(sectors), "windows_alone": windows_alone(sectors),
           "with_winre": mbr((2048, 206847, "07", True), (206848, 106 * 2048 - 1, "07", False),
                             (106 * 2048, sectors - 1, "27", False))}[name]
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(sectors * 512)
    write_mbr(raw, old, SIGNATURE)
    fill_partitions(raw, old)
    before = partition_hashes(raw, old)
    layout = plan_layout(old, sector_size=512, disk_sectors=sectors, windows_partition=1 if name == "windows_alone"
                         else 2)
    os.truncate(raw, sectors * 512 + layout.grow_bytes)
    write_gpt(raw, layout)

    assert "No problems found" in str(sh.sgdisk("--verify", str(raw)))
    written = json.loads(str(sh.sfdisk("--json", str(raw))))["partitiontable"]
    assert (written["label"], written["id"]) == ("gpt", layout.table.disk_guid)
    assert [(p["start"], p["start"] + p["size"] - 1, p["type"], p["uuid"]) for p in written["partitions"]] == [
        (p.start, p.end, p.type, p.guid) for p in layout.table.partitions]
    assert partition_hashes(raw, old) == before
    with open(raw, "rb") as f:
        protective = f.read(512)
    assert protective[450] == 0xEE and protective[510:512] == b"\x55\xaa"
    if name == "with_winre":
        assert written["partitions"][2]["attrs"] == "RequiredPartition GUID:63"
