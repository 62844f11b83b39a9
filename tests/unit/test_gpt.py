"""ce.guest.gpt: the GPT ce writes byte for byte, read by sgdisk (an independent reader: `sgdisk -v` verifies both
headers, both CRCs and the entries), including a GPT for a disk smaller than the file it is written on (the child's
size, decided after the overlay was made), and ce's own decoder refusing torn copies."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from ce.errors import PartitionTableFailed
from ce.guest import ESP_GUID, gpt
from ce.guest.partitions import PartitionEntry, PartitionTable, TableSectors

BASIC, WINRE = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"
MiB = 1 << 20


def table(sector: int) -> PartitionTable:
    per_mib = MiB // sector
    return PartitionTable(label="gpt", disk_guid="0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0", partitions=[
        PartitionEntry(number=1, start=per_mib, end=101 * per_mib - 1, type=BASIC,
                       guid="11111111-AAAA-4BBB-8CCC-000000000001", name="Basic data partition"),
        PartitionEntry(number=2, start=101 * per_mib, end=400 * per_mib - 1, type=WINRE,
                       guid="11111111-AAAA-4BBB-8CCC-000000000002", name="Recovery"),
        PartitionEntry(number=3, start=400 * per_mib, end=660 * per_mib - 1, type=ESP_GUID,
                       guid="11111111-AAAA-4BBB-8CCC-000000000003", name="EFI system partition")])


def write(path, sectors: TableSectors, file_size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(file_size)
        f.write(sectors.head)
        f.seek(sectors.tail_offset)
        f.write(sectors.tail)


def sgdisk(*args) -> str:
    return subprocess.run(["sgdisk", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("sector", [512, 4096])
def test_sgdisk_reads_what_ce_writes(tmp_path, sector):
    disk_sectors = 661 * MiB // sector
    sectors = gpt.encode(table(sector), sector_size=sector, disk_sectors=disk_sectors, attributes={2: 1 << 63 | 1})
    path = tmp_path / "disk.img"
    write(path, sectors, disk_sectors * sector)
    if sector == 4096:                   # sgdisk reads a file as 512-byte sectors, so only ce's reader here
        assert gpt.decode(sectors) == (table(sector), {2: 1 << 63 | 1})
        return
    assert "No problems found" in sgdisk("-v", str(path))
    printed = sgdisk("-p", "-i", "2", str(path))
    assert "Disk identifier (GUID): 0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0" in printed
    assert "Attribute flags: 8000000000000001" in printed and "(Windows RE)" in printed
    rows = {int(m[1]): (int(m[2]), int(m[3]), m[4]) for m in
            re.finditer(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+ \S+\s+(\w{4})", printed, re.M)}
    assert rows == {p.number: (p.start, p.end, code) for p, code in zip(table(sector).partitions,
                                                                         ("0700", "2700", "EF00"))}
    assert gpt.decode(sectors) == (table(sector), {2: 1 << 63 | 1})


def test_gpt_for_a_disk_smaller_than_its_file(tmp_path):
    """The overlay is larger than the child: the GPT ends at the child's end, and reads clean once cut there."""
    disk_sectors = 661 * MiB // 512
    sectors = gpt.encode(table(512), sector_size=512, disk_sectors=disk_sectors)
    path = tmp_path / "overlay.img"
    write(path, sectors, (disk_sectors + 300 * MiB // 512) * 512)
    os.truncate(path, disk_sectors * 512)
    assert "No problems found" in sgdisk("-v", str(path))


def test_torn_copies_are_refused():
    sectors = gpt.encode(table(512), sector_size=512, disk_sectors=661 * MiB // 512)
    torn_entry = bytearray(sectors.head)
    torn_entry[2 * 512 + 200] ^= 1
    with pytest.raises(PartitionTableFailed, match="entries"):
        gpt.decode(sectors.model_copy(update={"head": bytes(torn_entry)}))
    torn_backup = bytearray(sectors.tail)
    torn_backup[-512 + 24] ^= 1
    with pytest.raises(PartitionTableFailed, match="backup GPT header"):
        gpt.decode(sectors.model_copy(update={"tail": bytes(torn_backup)}))


def test_partitions_outside_the_usable_sectors_are_refused():
    small = 300 * MiB // 512                             # the ESP (400-660 MiB) does not fit
    with pytest.raises(PartitionTableFailed, match="partition 2"):
        gpt.encode(table(512), sector_size=512, disk_sectors=small)


def test_the_first_sector_read_as_a_partition_table(tmp_path):
    """table_from_mbr (the checks before a launch) against what sfdisk wrote, and a GPT's protective MBR."""
    from ce.guest.partitions import table_from_mbr
    path = tmp_path / "mbr.img"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["sfdisk", "--quiet", str(path)], input="label: dos\nstart=2048, size=40960, type=7, bootable\n"
                   "start=43008, size=20480, type=27\n", text=True, check=True)
    table = table_from_mbr(path.read_bytes()[:512])
    assert table.label == "msdos"
    assert [(p.number, p.start, p.end, p.type, p.bootable) for p in table.partitions] == \
        [(1, 2048, 43007, "07", True), (2, 43008, 63487, "27", False)]
    sectors = gpt.encode(_small_gpt(), sector_size=512, disk_sectors=64 * MiB // 512)
    assert table_from_mbr(sectors.head[:512]).label == "gpt"
    assert table_from_mbr(bytes(512)) == PartitionTable(label="msdos", partitions=[])


def _small_gpt() -> PartitionTable:
    return PartitionTable(label="gpt", disk_guid="0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0", partitions=[
        PartitionEntry(number=1, start=2048, end=4095, type=BASIC, guid="11111111-AAAA-4BBB-8CCC-000000000009")])
