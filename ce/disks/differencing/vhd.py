r"""VHD differencing children (Virtual Hard Disk Image Format Specification), written by ce.disks.differencing.

**VHD child** (Virtual Hard Disk Image Format Specification; reference section 2), big-endian: footer copy at 0,
dynamic header at 512, BAT at 1536, the parent locators' data, blocks (sector bitmap padded to 512 bytes, MSB
first, 1 = sector in the child; then the block's data), footer at the end. Footer: the parent's sizes, geometry
and features, disk type 4 (differencing), creator ``ce``, a fresh UniqueId, timestamp now. Dynamic header: block
size 2 MiB (the parent's when it is dynamic), Parent UniqueId = the parent footer's UniqueId (what an opener
checks), Parent TimeStamp = the parent file's modification time (``mtime``; do not touch the parent file
afterwards), Parent Unicode Name = ``parent_name`` (UTF-16BE, as VirtualBox and libvhdi read it), locators
``W2ru`` ``.\<parent_name>`` and ``W2ku`` ``parent_absolute`` when given (UTF-16LE; DataSpace in bytes, as Hyper-V
and Virtual PC store it, 512 reserved each). Changed extents are rounded out to 4 KiB so every bitmap byte is all
ones or all zeros: libvhdi 20210425 misreads a 0 bit after a 1 bit in the same byte. A VHD child has its parent's
size (Windows reports ERROR_VHD_CHILD_PARENT_SIZE_MISMATCH otherwise): a larger one is refused.
"""
from __future__ import annotations

import struct
import time
import uuid

from ...errors import LayoutError
from ..extents import round_up
from ..headers import SECTOR, VHD_COOKIE, VHD_DYNAMIC_COOKIE
from .blocks import KiB, Child, ChildSummary, set_bits

VHD_EPOCH = 946684800                      # 2000-01-01T00:00:00Z
VHD_HEADER_OFFSET, VHD_HEADER_SIZE = 512, 1024
VHD_BAT_OFFSET = VHD_HEADER_OFFSET + VHD_HEADER_SIZE
VHD_UNALLOCATED = 0xFFFFFFFF
VHD_GRANULE = 4 * KiB                      # one bitmap byte: libvhdi misreads mixed bits inside a byte
VHD_LOCATOR_SPACE = 512
VHD_DIFFERENCING = 4



class VhdChild(Child):
    def run(self, parent_name: str, parent_absolute: str | None) -> ChildSummary:
        parent = self.parent
        bitmap_size = round_up(self.block // SECTOR // 8, SECTOR)
        bat = bytearray(b"\xff" * round_up(4 * self.blocks, SECTOR))
        locators = [(b"W2ru", ".\\" + parent_name)]
        if parent_absolute:
            locators.append((b"W2ku", parent_absolute))
        locator_at = VHD_BAT_OFFSET + len(bat)
        free = locator_at + VHD_LOCATOR_SPACE * len(locators)
        counts = {"not_present": 0, "present": 0}
        for b in range(self.blocks):
            if b not in self.per_block:
                counts["not_present"] += 1
                continue
            counts["present"] += 1
            at, free = free, free + bitmap_size + self.block
            struct.pack_into(">I", bat, 4 * b, at // SECTOR)
            bitmap = bytearray(bitmap_size)
            base = b * self.block
            for start, end in self.per_block[b]:
                set_bits(bitmap, (start - base) // SECTOR, (end - start) // SECTOR, msb_first=True)
            self.write_runs(b, at + bitmap_size)
            self.put(at, bitmap)
        unique_id = uuid.uuid4().bytes
        footer = self._footer(unique_id)
        self.finish(free)
        self.put(free, footer)
        header = bytearray(VHD_HEADER_SIZE)
        struct.pack_into(">8sQQIII", header, 0, VHD_DYNAMIC_COOKIE, 0xFFFFFFFFFFFFFFFF, VHD_BAT_OFFSET, 0x00010000,
                         self.blocks, self.block)
        header[40:56] = parent.identifier
        struct.pack_into(">I", header, 56, _vhd_time(parent.mtime))
        header[64:576] = parent_name.encode("utf-16-be")[:512].ljust(512, b"\0")
        for i, (code, path) in enumerate(locators):
            data = path.encode("utf-16-le")
            if len(data) > VHD_LOCATOR_SPACE:
                raise LayoutError(f"the parent path {path!r} is longer than {VHD_LOCATOR_SPACE // 2} characters")
            at = locator_at + VHD_LOCATOR_SPACE * i
            struct.pack_into(">4sIIIQ", header, 576 + 24 * i, code, VHD_LOCATOR_SPACE, len(data),
                             0, at)
            self.put(at, data.ljust(VHD_LOCATOR_SPACE, b"\0"))
        struct.pack_into(">I", header, 36, _vhd_checksum(header))
        self.put(VHD_BAT_OFFSET, bat)
        self.put(VHD_HEADER_OFFSET, header)
        self.put(0, footer)
        return ChildSummary("vpc", free + SECTOR, self.size, self.block, counts, self.data_bytes,
                            str(uuid.UUID(bytes=unique_id)), parent.identifier_text,
                            {"W2ru": locators[0][1], **({"W2ku": parent_absolute} if parent_absolute else {}),
                             "parent_name": parent_name})

    def _footer(self, unique_id: bytes) -> bytes:
        footer = bytearray(self.parent.footer)
        if footer[:8] != VHD_COOKIE:
            raise LayoutError("the parent's VHD footer is missing")
        struct.pack_into(">QI4sI", footer, 16, VHD_HEADER_OFFSET, _vhd_time(time.time()), b"ce  ", 0x00010000)
        struct.pack_into(">I", footer, 60, VHD_DIFFERENCING)
        footer[64:68] = bytes(4)
        footer[68:84] = unique_id
        footer[84] = 0                                # saved state
        footer[85:] = bytes(len(footer) - 85)
        struct.pack_into(">I", footer, 64, _vhd_checksum(footer))
        return bytes(footer)


def _vhd_time(seconds: float) -> int:
    return max(0, int(seconds) - VHD_EPOCH) & 0xFFFFFFFF


def _vhd_checksum(data: bytearray) -> int:
    """One's complement of the byte sum (the checksum field must be zero when this is called)."""
    return ~sum(data) & 0xFFFFFFFF
