"""Partition tables of an attached disk through the appliance: the layout as data, the sectors that hold it, and
writing a planned layout -- checked, verified by reading it back, and put back byte for byte when anything fails.

A table's sectors are the first 34 (the MBR, or the protective MBR, GPT header and 128 entries) and the last 33
(GPT's backup entries and header). Writing a table touches nothing else, so saving and restoring those sectors is
a complete undo; the filesystems inside the partitions are not moved.
"""
from __future__ import annotations

import struct
from typing import Literal

from pydantic import BaseModel, ConfigDict
from ..document import Document

from ..errors import ImageChangedSincePlan, PartitionTableFailed

HEAD_SECTORS, TAIL_SECTORS = 34, 33
LABELS = {"gpt": "GPT", "msdos": "MBR"}


class PartitionEntry(Document):
    number: int
    start: int                      # first sector
    end: int                        # last sector, inclusive
    type: str                       # GPT: the partition type GUID; MBR: the partition id as hex ("07")
    guid: str | None = None         # GPT: the partition's own GUID
    name: str = ""                  # GPT: the partition's name
    bootable: bool = False          # MBR: the active flag


class PartitionTable(Document):
    label: Literal["gpt", "msdos"]
    partitions: list[PartitionEntry]
    disk_guid: str | None = None    # GPT only

    def describe(self) -> str:
        return f"{LABELS[self.label]}, {len(self.partitions)} partition(s)"


class TableSectors(BaseModel):
    """The bytes a partition table lives in, as read before it is replaced."""
    model_config = ConfigDict(defer_build=True)          # built on first use, not at every command's start-up
    sector_size: int
    head: bytes
    tail: bytes
    tail_offset: int


MBR_ENTRIES, MBR_BOOT_SIGNATURE, GPT_PROTECTIVE = 446, b"\x55\xaa", 0xEE


def table_from_mbr(sector: bytes) -> PartitionTable:
    """The primary partitions of an MBR read from the disk's first sector, before any launch (a protective MBR
    reads as an empty GPT table; a sector without the 55 AA signature as an empty MBR one)."""
    if len(sector) < 512 or sector[510:512] != MBR_BOOT_SIGNATURE:
        return PartitionTable(label="msdos", partitions=[])
    entries = []
    for n in range(4):
        status, kind, start, count = struct.unpack_from("<B3xB3xII", sector, MBR_ENTRIES + 16 * n)
        if kind == GPT_PROTECTIVE:
            return PartitionTable(label="gpt", partitions=[])
        if kind and count:
            entries.append(PartitionEntry(number=n + 1, start=start, end=start + count - 1, type=f"{kind:02x}",
                                          bootable=status == 0x80))
    return PartitionTable(label="msdos", partitions=entries)


def read_table(guest, device: str) -> PartitionTable:
    g = guest.g
    label = g.part_get_parttype(device)
    if label not in LABELS:
        raise PartitionTableFailed(f"{device} has a {label!r} partition table, which ce does not edit")
    sector = g.blockdev_getss(device)
    entries = []
    for part in g.part_list(device):
        n = part["part_num"]
        entry = PartitionEntry(number=n, start=part["part_start"] // sector, end=part["part_end"] // sector,
                               type="")
        if label == "gpt":
            entry.type, entry.guid = g.part_get_gpt_type(device, n).upper(), g.part_get_gpt_guid(device, n).upper()
            entry.name = g.part_get_name(device, n)
        else:
            entry.type, entry.bootable = f"{g.part_get_mbr_id(device, n):02x}", bool(g.part_get_bootable(device, n))
        entries.append(entry)
    disk_guid = g.part_get_disk_guid(device).upper() if label == "gpt" else None
    return PartitionTable(label=label, partitions=entries, disk_guid=disk_guid)


def read_sectors(guest, device: str) -> TableSectors:
    g = guest.g
    sector, size = g.blockdev_getss(device), g.blockdev_getsize64(device)
    tail_offset = size - TAIL_SECTORS * sector
    return TableSectors(sector_size=sector, head=g.pread_device(device, HEAD_SECTORS * sector, 0),
                        tail=g.pread_device(device, TAIL_SECTORS * sector, tail_offset), tail_offset=tail_offset)


def write_sectors(guest, device: str, saved: TableSectors) -> None:
    g = guest.g
    for data, offset in ((saved.head, 0), (saved.tail, saved.tail_offset)):
        done = 0
        while done < len(data):
            done += g.pwrite_device(device, data[done:], offset + done)
    g.sync()
    g.blockdev_rereadpt(device)


def write_table(guest, device: str, table: PartitionTable) -> None:
    """Replace the table with ``table``; the disk's filesystems must not be mounted (``Guest.unmounted``)."""
    g = guest.g
    g.part_init(device, table.label)
    for entry in sorted(table.partitions, key=lambda e: e.number):
        g.part_add(device, "p", entry.start, entry.end)
        if table.label == "gpt":
            g.part_set_gpt_type(device, entry.number, entry.type)
            if entry.guid:
                g.part_set_gpt_guid(device, entry.number, entry.guid)
            if entry.name:
                g.part_set_name(device, entry.number, entry.name)
        else:
            g.part_set_mbr_id(device, entry.number, int(entry.type, 16))
            g.part_set_bootable(device, entry.number, entry.bootable)
    if table.label == "gpt" and table.disk_guid:
        g.part_set_disk_guid(device, table.disk_guid)
    g.sync()


def replace_table(guest, device: str, old: PartitionTable, new: PartitionTable) -> TableSectors:
    """Check that ``device`` holds ``old``, write ``new`` and read it back; on any failure put the saved sectors
    back (and check that ``old`` reads back) before raising. Returns the saved sectors, for a backup."""
    current = read_table(guest, device)
    if current != old:
        raise ImageChangedSincePlan(f"{device}'s partition table is {current.describe()} now, not the one planned "
                                    f"({old.describe()}); nothing was written, plan again")
    saved = read_sectors(guest, device)
    try:
        write_table(guest, device, new)
        written = read_table(guest, device)
        if written != new:
            raise PartitionTableFailed(f"{device}: the partition table read back as {written.describe()} with "
                                       f"other entries than planned")
    except (RuntimeError, PartitionTableFailed) as exc:
        write_sectors(guest, device, saved)
        restored = read_table(guest, device) == old
        raise PartitionTableFailed(f"{device}: writing the {new.describe()} table failed ({exc}); "
                                   + ("the old table was put back" if restored else
                                      "putting the old table back did not read back right either")) from None
    return saved
