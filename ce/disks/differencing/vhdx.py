r"""VHDX differencing children (MS-VHDX v8.0), written by ce.disks.differencing.

**VHDX child** (MS-VHDX v8.0; ../shared/reference/uefi-differencing-diagnostics.md section 1), laid out as the
Hyper-V child sample is: file identifier (creator "ce") at 0; two headers at 64/128 KiB, identical but for
SequenceNumber (1, 2), each with CRC-32C, fresh random FileWriteGuid and DataWriteGuid, LogGuid zero (the log is
empty, never replayed); two identical region tables at 192/256 KiB (BAT and metadata, both Required); an empty
1 MiB log at 1 MiB; the metadata region (1 MiB at 2 MiB); the BAT at 3 MiB; then sector-bitmap blocks and payload
blocks, 1 MiB-aligned. Metadata items, packed from 64 KiB into the region:

* File Parameters (IsRequired): BlockSize 2 MiB (Hyper-V's child value; ``block_size=`` changes it), flags
  HasParent (bit 1) only;
* Virtual Disk Size, Page 83 Data, Logical Sector Size, Physical Sector Size (IsVirtualDisk | IsRequired): copied
  from the parent as MS-VHDX 2.6.1.2 requires for forked disks, except that the size may be larger (a grown child);
* Parent Locator (IsRequired), type ``{B04AEFB7-D19E-4A81-B789-25B8E9445913}``, keys in this order:
  ``parent_linkage`` = the parent's DataWriteGuid from its *current* header, lowercase with braces (the spec's
  MUST; an opener checks it); ``relative_path`` = ``.\<parent_name>`` (Hyper-V's own form, evaluated first by
  Windows and by dissect.hypervisor: the child sits beside its parent, as PVS keeps vDisk versions);
  ``absolute_win32_path`` = ``parent_absolute`` when the caller knows it (e.g. ``\\?\UNC\server\share\x.vhdx``)
  -- libvhdi ignores ``relative_path`` and opens the basename of this key in the child's directory, so give it
  whenever the child is for libvhdi-based tools. Not written: ``volume_path`` (the volume GUID of a remote share
  cannot be known) and ``parent_linkage2`` (only used while merging).

BAT (interleaved: payload block b at index ``b + b // cr``, the sector-bitmap entry of chunk c at
``c * (cr + 1) + cr``, chunk ratio ``cr = 2**23 * logical sector / block size``, ``ceil(blocks / cr) * (cr + 1)``
entries for a child). Per payload block of the child's virtual size:

* no change, inside the parent: NOT_PRESENT (0) -- read from the parent;
* changes covering the whole block: FULLY_PRESENT (6), the block holds the merged bytes;
* changes covering part of it: PARTIALLY_PRESENT (7), the block holds the changed sectors, and the sector bitmap
  of its chunk (state PRESENT, 1 MiB, bit k LSB-first = sector k of the chunk) marks exactly those sectors. Every
  chunk gets a sector bitmap block, all zeros where nothing is partly present (allocated, never sent): libvhdi
  20210425 reads a NOT_PRESENT block of a chunk whose bitmap entry is NOT_PRESENT from the child's own file
  (offset 0), not from the parent -- measured here; the Hyper-V sample has bitmap blocks too. It costs 1 MiB of
  file per 4 GiB of disk (2 MiB blocks, 512-byte sectors);
* grown child (virtual size > the parent's): a block that straddles the parent's end is FULLY_PRESENT (parent
  bytes, changes, zeros past the end), and so is a changed block wholly past it; an unchanged block wholly past it
  is ZERO (2, "MUST read as zeros"; it costs no space). dissect.hypervisor reads all of these right; libvhdi
  20210425 goes to the parent for ZERO blocks and fails with EIO past its end, so ``past_parent="allocated"``
  writes those blocks FULLY_PRESENT instead (no bytes are sent for them, only the file grows, sparse on local
  file systems). Whether Hyper-V accepts NOT_PRESENT there is unknown, so it is never written past the end.
"""
from __future__ import annotations

import struct
import uuid

from ..headers import (VHDX_BAT_REGION, VHDX_FILE_PARAMETERS, VHDX_HAS_PARENT, VHDX_HEADER_SIZE, VHDX_HEADERS,
                       VHDX_LOGICAL_SECTOR_SIZE, VHDX_METADATA_REGION, VHDX_PAGE83_DATA, VHDX_PARENT_LOCATOR,
                       VHDX_PHYSICAL_SECTOR_SIZE, VHDX_REGION_TABLE, VHDX_SIGNATURE, VHDX_VIRTUAL_DISK_SIZE, crc32c)
from ..extents import round_up
from .blocks import KiB, MiB, Child, ChildSummary, set_bits

NOT_PRESENT, ZERO, FULLY_PRESENT, PARTIALLY_PRESENT = 0, 2, 6, 7
SB_PRESENT = 6
SECTOR_BITMAP_BLOCK = MiB
PARENT_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913").bytes_le
IS_VIRTUAL_DISK, IS_REQUIRED = 2, 4
LOG_OFFSET, LOG_LENGTH = MiB, MiB
METADATA_OFFSET, METADATA_LENGTH = 2 * MiB, MiB
BAT_OFFSET = 3 * MiB
METADATA_ITEMS_START = 64 * KiB
CREATOR = "ce (Compositing Engine)"


class VhdxChild(Child):
    def __init__(self, parent, runs, read_merged, sink, size, block, past_parent):
        super().__init__(parent, runs, read_merged, sink, size, block)
        self.past_parent = past_parent
        self.chunk_ratio = (1 << 23) * parent.logical_sector // block
        self.sectors_per_block = block // parent.logical_sector

    def state(self, b: int) -> int:
        start, end = self.span(b)
        parent_end = self.parent.virtual_size
        if start >= parent_end:
            if b in self.per_block or self.past_parent == "allocated":
                return FULLY_PRESENT
            return ZERO
        if end > parent_end:
            return FULLY_PRESENT             # straddles the parent's end: readers must not go to the parent there
        if b not in self.per_block:
            return NOT_PRESENT
        return FULLY_PRESENT if self.covered(b) else PARTIALLY_PRESENT

    def run(self, parent_name: str, parent_absolute: str | None) -> ChildSummary:
        states = [self.state(b) for b in range(self.blocks)]
        chunks_count = -(-self.blocks // self.chunk_ratio)
        entries = chunks_count * (self.chunk_ratio + 1)
        bat_length = round_up(entries * 8, MiB)
        bat = bytearray(entries * 8)
        free = BAT_OFFSET + bat_length
        bitmaps: dict[int, tuple[int, bytearray]] = {}     # chunk: (file offset, 1 MiB sector bitmap)
        for chunk in range(chunks_count):      # every chunk has one: libvhdi reads a NOT_PRESENT block of a chunk
            bitmaps[chunk] = (free, bytearray(SECTOR_BITMAP_BLOCK))     # without one from the child's own file
            free += SECTOR_BITMAP_BLOCK
        counts: dict[str, int] = {}
        for b, state in enumerate(states):
            name = {NOT_PRESENT: "not_present", ZERO: "zero", FULLY_PRESENT: "fully_present",
                    PARTIALLY_PRESENT: "partially_present"}[state]
            counts[name] = counts.get(name, 0) + 1
            index = b + b // self.chunk_ratio
            if state in (NOT_PRESENT, ZERO):
                struct.pack_into("<Q", bat, 8 * index, state)
                continue
            at, free = free, free + self.block
            struct.pack_into("<Q", bat, 8 * index, at | state)
            if state == FULLY_PRESENT:
                if b in self.per_block and self.span(b)[0] >= self.parent.virtual_size and not self.covered(b):
                    self.write_runs(b, at)           # past the parent: the rest of the block reads as file zeros
                elif b in self.per_block or self.span(b)[0] < self.parent.virtual_size:
                    self.write_whole(b, at)
            else:
                self.write_runs(b, at)
                self._mark(bitmaps[b // self.chunk_ratio][1], b)
        for chunk, (at, bitmap) in bitmaps.items():
            struct.pack_into("<Q", bat, 8 * (chunk * (self.chunk_ratio + 1) + self.chunk_ratio), at | SB_PRESENT)
            if any(bitmap):                  # an all-zero one stays a hole of the new file
                self.put(at, bitmap)
        self.finish(free)
        self.put(BAT_OFFSET, bat)
        locator = {"parent_linkage": "{" + self.parent.identifier_text + "}", "relative_path": ".\\" + parent_name}
        if parent_absolute:
            locator["absolute_win32_path"] = parent_absolute
        self.put(METADATA_OFFSET, self._metadata(locator))
        self.put(0, self._file_identifier())
        table = self._region_table(bat_length)
        for offset in (VHDX_REGION_TABLE, VHDX_REGION_TABLE + 64 * KiB):
            self.put(offset, table)
        file_write, data_write = uuid.uuid4().bytes_le, uuid.uuid4().bytes_le
        for sequence, offset in enumerate(VHDX_HEADERS, start=1):
            self.put(offset, self._header(sequence, file_write, data_write))
        return ChildSummary("vhdx", max(free, self.end), self.size, self.block, counts, self.data_bytes,
                            str(uuid.UUID(bytes_le=data_write)), self.parent.identifier_text, locator)

    def _mark(self, bitmap: bytearray, b: int) -> None:
        """Set the bits of block ``b``'s changed sectors in its chunk's bitmap (bit k LSB-first = sector k)."""
        sector = self.parent.logical_sector
        first_of_block = (b % self.chunk_ratio) * self.sectors_per_block
        base = b * self.block
        for start, end in self.per_block[b]:
            set_bits(bitmap, first_of_block + (start - base) // sector, (end - start) // sector, msb_first=False)

    def _metadata(self, locator: dict[str, str]) -> bytes:
        parent = self.parent
        items = [
            (VHDX_FILE_PARAMETERS, IS_REQUIRED, struct.pack("<II", self.block, VHDX_HAS_PARENT)),
            (VHDX_VIRTUAL_DISK_SIZE, IS_VIRTUAL_DISK | IS_REQUIRED, struct.pack("<Q", self.size)),
            (VHDX_PAGE83_DATA, IS_VIRTUAL_DISK | IS_REQUIRED, parent.page83),
            (VHDX_LOGICAL_SECTOR_SIZE, IS_VIRTUAL_DISK | IS_REQUIRED, struct.pack("<I", parent.logical_sector)),
            (VHDX_PHYSICAL_SECTOR_SIZE, IS_VIRTUAL_DISK | IS_REQUIRED, struct.pack("<I", parent.physical_sector)),
            (VHDX_PARENT_LOCATOR, IS_REQUIRED, _parent_locator(locator)),
        ]
        region = bytearray(METADATA_ITEMS_START)
        struct.pack_into("<8sHH", region, 0, b"metadata", 0, len(items))
        for i, (guid, flags, data) in enumerate(items):
            struct.pack_into("<16sIII4x", region, 32 + 32 * i, guid, len(region), len(data), flags)
            region += data
        return bytes(region)

    @staticmethod
    def _file_identifier() -> bytes:
        return VHDX_SIGNATURE + CREATOR.encode("utf-16-le")

    @staticmethod
    def _region_table(bat_length: int) -> bytes:
        table = bytearray(64 * KiB)
        struct.pack_into("<4sII", table, 0, b"regi", 0, 2)
        struct.pack_into("<16sQII", table, 16, VHDX_BAT_REGION, BAT_OFFSET, bat_length, 1)
        struct.pack_into("<16sQII", table, 48, VHDX_METADATA_REGION, METADATA_OFFSET, METADATA_LENGTH, 1)
        struct.pack_into("<I", table, 4, crc32c(table))
        return bytes(table)

    @staticmethod
    def _header(sequence: int, file_write: bytes, data_write: bytes) -> bytes:
        header = bytearray(VHDX_HEADER_SIZE)
        struct.pack_into("<4sIQ16s16s16sHHIQ", header, 0, b"head", 0, sequence, file_write, data_write, bytes(16),
                         0, 1, LOG_LENGTH, LOG_OFFSET)
        struct.pack_into("<I", header, 4, crc32c(header))
        return bytes(header)


def _parent_locator(pairs: dict[str, str]) -> bytes:
    """The parent locator item (MS-VHDX 2.6.2.6): header, 12-byte entries, then keys and values (UTF-16LE, no NUL)
    packed in entry order, offsets from the item's start."""
    head = struct.pack("<16sHH", PARENT_LOCATOR_TYPE, 0, len(pairs))
    strings = bytearray()
    entries = bytearray()
    base = len(head) + 12 * len(pairs)
    for key, value in pairs.items():
        k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
        entries += struct.pack("<IIHH", base + len(strings), base + len(strings) + len(k), len(k), len(v))
        strings += k + v
    return head + bytes(entries) + bytes(strings)
