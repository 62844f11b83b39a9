"""GPT written by ce, byte for byte (UEFI 2.10 §5.2-5.3): a protective MBR, the primary header and 128-entry array,
the backup array and header -- for a disk of a given size, which may be smaller than the device it is written on.
The sectors are ``partitions.TableSectors`` (``head`` from LBA 0, ``tail`` ending at the disk's last sector) and go
to the disk through ``partitions.write_sectors``, as any table's do.

The MBR→GPT conversion of a differencing child (convertToUefi) needs that: the child's final size is known only
once the plan has seen the disk, while the appliance was started on an edit overlay large enough for any outcome;
the GPT describes the child, and nothing is written past its end. parted (``partitions.write_table``) always puts
the backup at the device's end and cannot set arbitrary attribute bits (WinRE's), so this module writes the
sectors itself and reads them back with its own checks (both headers, both CRC-32s, the same entries).
"""
from __future__ import annotations

import struct
import uuid
import zlib

from ..errors import ImageChangedSincePlan, PartitionTableFailed
from . import partitions
from .partitions import PartitionEntry, PartitionTable, TableSectors

SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")       # 92 bytes
ENTRY = struct.Struct("<16s16sQQQ72s")             # 128 bytes
ENTRIES, ENTRY_SIZE = 128, 128
PROTECTIVE_TYPE = 0xEE


def entry_sectors(sector_size: int) -> int:
    return ENTRIES * ENTRY_SIZE // sector_size


def encode(table: PartitionTable, *, sector_size: int, disk_sectors: int,
           attributes: dict[int, int] | None = None) -> TableSectors:
    """The sectors of ``table`` (label gpt; entry N in slot N) on a disk of ``disk_sectors``."""
    if table.label != "gpt" or not table.disk_guid:
        raise PartitionTableFailed("a GPT needs a gpt table with a disk GUID")
    n = entry_sectors(sector_size)
    last, first_usable = disk_sectors - 1, 2 + n
    last_usable = last - n - 1
    array = bytearray(ENTRIES * ENTRY_SIZE)
    for p in table.partitions:
        if not (1 <= p.number <= ENTRIES and first_usable <= p.start <= p.end <= last_usable):
            raise PartitionTableFailed(f"partition {p.number} ({p.start}-{p.end}) is outside the usable sectors "
                                       f"{first_usable}-{last_usable} of a {disk_sectors}-sector GPT disk")
        name = p.name.encode("utf-16-le")[:72]
        ENTRY.pack_into(array, (p.number - 1) * ENTRY_SIZE, _guid(p.type), _guid(p.guid), p.start, p.end,
                        (attributes or {}).get(p.number, 0), name)
    array_crc = zlib.crc32(array)
    disk = _guid(table.disk_guid)
    primary = _header(1, last, first_usable, last_usable, disk, 2, array_crc)
    backup = _header(last, 1, first_usable, last_usable, disk, last - n, array_crc)
    head = _protective_mbr(disk_sectors, sector_size) + _sector(primary, sector_size) + bytes(array)
    tail = bytes(array) + _sector(backup, sector_size)
    return TableSectors(sector_size=sector_size, head=head, tail=tail, tail_offset=(last - n) * sector_size)


def decode(sectors: TableSectors) -> tuple[PartitionTable, dict[int, int]]:
    """The table (and attribute bits by number) the sectors hold; refuses a GPT whose headers, CRCs or entry
    arrays disagree."""
    size = sectors.sector_size
    primary = _read_header(sectors.head[size:2 * size], "primary")
    backup = _read_header(sectors.tail[-size:], "backup")
    array = sectors.head[2 * size:2 * size + ENTRIES * ENTRY_SIZE]
    if zlib.crc32(array) != primary[13] or sectors.tail[:ENTRIES * ENTRY_SIZE] != array:
        raise PartitionTableFailed("the GPT's partition entries do not match their CRC or their backup copy")
    if (primary[9], primary[7], primary[8]) != (backup[9], backup[7], backup[8]) or primary[6] != backup[5]:
        raise PartitionTableFailed("the GPT's primary and backup headers disagree")
    entries, attributes = [], {}
    for slot in range(ENTRIES):
        type_, unique, start, end, attrs, name = ENTRY.unpack_from(array, slot * ENTRY_SIZE)
        if type_ == bytes(16):
            continue
        entries.append(PartitionEntry(number=slot + 1, start=start, end=end, type=_text(type_), guid=_text(unique),
                                      name=name.decode("utf-16-le").rstrip("\0")))
        if attrs:
            attributes[slot + 1] = attrs
    return PartitionTable(label="gpt", partitions=entries, disk_guid=_text(primary[9])), attributes


def _header(my_lba: int, alternate: int, first_usable: int, last_usable: int, disk: bytes, entries_lba: int,
            array_crc: int) -> bytes:
    fields = [SIGNATURE, REVISION, HEADER.size, 0, 0, my_lba, alternate, first_usable, last_usable, disk,
              entries_lba, ENTRIES, ENTRY_SIZE, array_crc]
    fields[3] = zlib.crc32(HEADER.pack(*fields))
    return HEADER.pack(*fields)


def _read_header(sector: bytes, which: str) -> tuple:
    fields = HEADER.unpack_from(sector)
    unchecked = HEADER.pack(*fields[:3], 0, *fields[4:])
    if fields[0] != SIGNATURE or fields[2] != HEADER.size or zlib.crc32(unchecked) != fields[3] \
            or (fields[11], fields[12]) != (ENTRIES, ENTRY_SIZE):
        raise PartitionTableFailed(f"the {which} GPT header is not valid (signature, size or CRC)")
    return fields


def _protective_mbr(disk_sectors: int, sector_size: int) -> bytes:
    """An MBR with one 0xEE record covering the disk from LBA 1 (the rest of LBA 0 zero: BIOS boot code is of no
    use to a GPT disk, and keeping it would let a BIOS VM run it against a table it cannot read)."""
    record = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", PROTECTIVE_TYPE, b"\xff\xff\xff", 1,
                         min(disk_sectors - 1, 0xFFFFFFFF))
    mbr = bytes(446) + record + bytes(48) + b"\x55\xaa"
    return mbr + bytes(sector_size - len(mbr))


def _sector(data: bytes, sector_size: int) -> bytes:
    return data + bytes(sector_size - len(data))


def _guid(text: str | None) -> bytes:
    return uuid.UUID(text).bytes_le


def _text(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw)).upper()


def write_converted(guest, device: str, old: PartitionTable, sectors: TableSectors,
                    expected: tuple[PartitionTable, dict[int, int]]) -> TableSectors:
    """Replace ``device``'s MBR table ``old`` with the GPT ``sectors``, read it back (it must decode to
    ``expected``) and have the kernel see the new partitions; on any failure the saved sectors are put back.
    Returns what the GPT's sectors held before, for a backup. Nothing of the disk may be mounted."""
    g = guest.g
    current = partitions.read_table(guest, device)
    if current != old:
        raise ImageChangedSincePlan(f"{device}'s partition table is {current.describe()} now, not the one planned "
                                    f"({old.describe()}); nothing was written, plan again")
    end = sectors.tail_offset + len(sectors.tail)
    if g.blockdev_getsize64(device) < end:
        raise PartitionTableFailed(f"{device} is smaller than the {end}-byte disk the GPT describes")
    saved = sectors.model_copy(update={"head": _pread(g, device, len(sectors.head), 0),
                                       "tail": _pread(g, device, len(sectors.tail), sectors.tail_offset)})
    try:
        partitions.write_sectors(guest, device, sectors)
        back = decode(sectors.model_copy(update={"head": _pread(g, device, len(sectors.head), 0),
                                                 "tail": _pread(g, device, len(sectors.tail), sectors.tail_offset)}))
        if back != expected:
            raise PartitionTableFailed(f"{device}: the GPT read back with other entries than planned")
    except (RuntimeError, PartitionTableFailed) as exc:
        partitions.write_sectors(guest, device, saved)
        restored = partitions.read_table(guest, device) == old
        raise PartitionTableFailed(f"{device}: writing the GPT failed ({exc}); " +
                                   ("the MBR was put back" if restored else
                                    "putting the MBR back did not read back right either")) from None
    return saved


def _pread(g, device: str, length: int, offset: int) -> bytes:
    parts, done = [], 0
    while done < length:
        chunk = g.pread_device(device, min(length - done, 1 << 20), offset + done)
        if not chunk:
            raise PartitionTableFailed(f"{device}: short read at {offset + done}")
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)
