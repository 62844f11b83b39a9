"""Where each byte of a raw disk goes inside a VHDX, VHD or VMDK file: streaming a disk into a container.

An export used to convert the disk into a local VHDX and then upload that file: every byte was written twice and
read twice. A layout lets ``SmbShare.upload`` send the disk's own bytes to their final offsets inside the
container instead, and finish with the container's metadata; ``fill`` does the same into a local file, which is
one of ``ce.disks.convert``'s two ways to turn a raw disk into these formats (the other is qemu-img's; the faster
per pair is ``conversion.FILL_LOCALLY``, from ``bench/disks.py --both-methods``).

The metadata is not written by ce: ``qemu-img create`` makes an empty container of the disk's size (a few MiB, or
a sparse file for the fixed subformats), and a layout only fills in the block allocation table of that container
for the blocks it places. No format checksums its allocation table (MS-VHDX 2.2.2 and 2.5: headers, region tables
and log entries are checksummed, the BAT is not; the VHD footer's and dynamic header's checksums cover only
themselves; VMDK sparse extents have no checksums), so qemu-img's headers stay valid byte for byte.

Block placement follows what qemu-img itself does when it converts: dynamic blocks are appended in the order they
are first written -- 1 MiB aligned for VHDX (MS-VHDX 2.5.1); behind an all-ones sector bitmap for VHD; 64 KiB
grains recorded in both the grain table and its redundant copy for VMDK -- and all-zero blocks are never
allocated, so they read back as zeros. Fixed VHDX blocks go where the file reserves room for them.

Formats: VHDX dynamic and fixed, VHD dynamic and fixed, VMDK monolithicSparse, raw (identity). streamOptimized
VMDKs (compressed grains) and differencing containers stay with qemu-img.
"""
from __future__ import annotations

import errno
import os
import struct
import uuid
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConversionFailed, LayoutError
from .create import create_empty
from .extents import byte_size, chunks, data_extents, round_up, zeros
from .formats import SUBFORMATS
from .headers import (SECTOR, VHDX_BAT_REGION, VHDX_METADATA_REGION, VHDX_REGION_TABLE, vhd_dynamic_header, vhd_type,
                      vhd_virtual_size, vhdx_geometry, vhdx_metadata_items, vhdx_regions, vmdk_header)
from .writeback import EarlyWriteback

MiB = 1 << 20
VHDX_BLOCK_FULLY_PRESENT = 6
VHDX_BLOCK_STATE_MASK = 7
VHDX_OFFSET_MASK = ~((1 << 20) - 1)       # entries hold the block's file offset in MiB from bit 20
VHD_UNALLOCATED = 0xFFFFFFFF
FILL_STEP = 1 << 20                       # source bytes planned at a time (cancel, progress); the kernel copies them
COPY_BUFFER = 256 << 10                   # without copy_file_range: one buffer that stays in the CPU's cache (8 MiB
                                          # ones made a local fill 1.5-3x slower here, bench/disks.py)
PROBE = 512                               # bytes of a grain read first to tell data from zeros
NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS}   # copy_file_range cannot: pread / pwrite
PROGRESS_STEP = 0.5                       # percent
ZERO_GRAIN = 64 << 10                     # zero stretches this long inside a written block stay holes


class Identity:
    """A plain copy: byte n of the source is byte n of the file."""

    def __init__(self, size: int):
        self.source_size = size
        self.block_size = None              # chunks may be any length

    def place(self, offset: int, length: int) -> int:
        return offset

    def metadata(self) -> list[tuple[int, bytes]]:
        return []

    @property
    def size(self) -> int:
        return self.source_size

    @property
    def overhead(self) -> int:
        return 0


class _Blocks:
    """What the block-based layouts share: ``head`` holds every metadata byte (written at offset 0 when the data
    is in place) and new blocks go at ``next_free``."""

    def metadata(self) -> list[tuple[int, bytes]]:
        return [(0, bytes(self.head))]

    @property
    def size(self) -> int:
        return self.next_free

    @property
    def overhead(self) -> int:
        return len(self.head)

    def _block_of(self, offset: int, length: int) -> tuple[int, int]:
        """(block number, offset within it) of a chunk, which must lie inside one block of the disk."""
        block, within = divmod(offset, self.block_size)
        if within + length > self.block_size:
            raise LayoutError(f"a chunk at {offset} of {length} bytes crosses a {self.block_size}-byte block")
        if not 0 <= offset < self.source_size:
            raise LayoutError(f"block {block} is outside the {self.source_size}-byte disk")
        return block, within


STREAMABLE = {"vhdx": ("dynamic", "fixed"), "vpc": ("dynamic", "fixed"), "vmdk": ("monolithicSparse",)}


def streamable(source, fmt: str, subformat: str | None) -> bool:
    """A raw disk (file or block device, whole sectors: qemu-img pads a partial last one) going to a container
    with a layout; other sources need qemu-img to read them."""
    if fmt not in STREAMABLE or (subformat or SUBFORMATS[fmt][0]) not in STREAMABLE[fmt]:
        return False
    return source.format == "raw" and byte_size(source.path) == source.virtual_size


def make(fmt: str, subformat: str, size: int, scratch) -> "VhdxLayout | VhdLayout | VmdkLayout":
    """The layout of a new ``fmt`` container of ``size`` bytes, made empty by qemu-img in the ``scratch``
    directory (a few MiB; a sparse file for the fixed subformats)."""
    empty = os.path.join(scratch, f"empty.{fmt}")
    create_empty(empty, fmt, size, subformat)
    return for_container(empty, fmt, subformat)


def fill(source, container, fmt: str, subformat: str, *, progress: Callable[[float], None] | None = None,
         cancel: Callable[[], None] | None = None, writeback: bool = False) -> None:
    """Write the raw disk ``source`` into ``container``, an empty one ``create_empty`` made for its size.
    ``progress(percent)``; ``cancel()`` raises to stop (the caller removes the half-written container);
    ``writeback`` starts writing the container to disk while it is filled, for an output that is flushed after.
    A failed read or write raises ConversionFailed."""
    layout = for_container(os.fspath(container), fmt, subformat)
    try:
        with open(source, "rb") as src, open(container, "r+b") as dst:
            copier = _Copier(src.fileno(), dst.fileno(), os.fspath(source))
            _fill_data(layout, copier, EarlyWriteback(dst.fileno(), writeback), progress, cancel)
            for at, data in layout.metadata():
                copier.write(memoryview(data), at)
            os.ftruncate(dst.fileno(), layout.size)
    except OSError as exc:
        raise ConversionFailed(f"filling {os.fspath(container)} from {os.fspath(source)} failed: "
                               f"{exc.strerror or exc}") from exc
    if progress:
        progress(100.0)


def _fill_data(layout, copier: "_Copier", early: EarlyWriteback, progress, cancel) -> None:
    """Copy every non-zero grain of the source to where ``layout`` places it, FILL_STEP at a time."""
    block = layout.block_size or FILL_STEP
    reported = 0.0
    for offset, length in chunks(data_extents(copier.src, layout.source_size), FILL_STEP, max(block, FILL_STEP)):
        if cancel:
            cancel()
        for start, end, at in _runs(layout, copier.is_zero, offset, length, block):
            copier.copy(start, end - start, at)
            early.wrote(end - start)
        percent = 100 * (offset + length) / layout.source_size
        if progress and percent < 100 and percent - reported >= PROGRESS_STEP:
            progress(percent)
            reported = percent


def _runs(layout, is_zero, offset: int, length: int, block: int) -> list[tuple[int, int, int]]:
    """(start, end, file offset) of the non-zero parts of the source's [offset, offset + length): a block with no
    data is not allocated, and inside an allocated block zero grains of ZERO_GRAIN stay holes of the local file.
    Runs are merged where both sides are contiguous: consecutive new VMDK grains are one copy."""
    runs: list[list[int]] = []
    for piece, size in chunks([(offset, length)], block, block):
        grains = [(start, n) for start, n in chunks([(piece, size)], ZERO_GRAIN, ZERO_GRAIN) if not is_zero(start, n)]
        if not grains:
            continue
        shift = layout.place(piece, size) - piece
        for start, n in grains:
            if runs and runs[-1][1] == start and runs[-1][2] - runs[-1][0] == shift:
                runs[-1][1] = start + n
            else:
                runs.append([start, start + n, start + shift])
    return [tuple(run) for run in runs]


class _Copier:
    """Source bytes to container offsets. copy_file_range copies inside the kernel, each byte once instead of into
    Python and back out (a sixth less CPU here); where the kernel cannot (a block device, another file system)
    pread / pwrite through one COPY_BUFFER. Zero grains are found by reading PROBE bytes first: data almost always
    shows in them, and only a grain that starts with zeros is read whole."""

    def __init__(self, src: int, dst: int, name: str):
        self.src, self.dst, self.name = src, dst, name
        self.in_kernel = hasattr(os, "copy_file_range")
        self.buffer = memoryview(bytearray(COPY_BUFFER))

    def is_zero(self, offset: int, length: int) -> bool:
        head = min(PROBE, length)
        self._read(self.buffer[:head], offset)
        if not self.buffer.obj.startswith(zeros(head)):
            return False
        self._read(self.buffer[head:length], offset + head)
        return self.buffer.obj.startswith(zeros(length))

    def copy(self, start: int, length: int, at: int) -> None:
        end = start + length
        while start < end:
            done = self._copy_some(start, end - start, at)
            if not done:
                raise LayoutError(f"{self.name} ended early (short read at {start})")
            start, at = start + done, at + done

    def write(self, data: memoryview, at: int) -> None:
        while data:
            written = os.pwrite(self.dst, data, at)
            data, at = data[written:], at + written

    def _copy_some(self, start: int, length: int, at: int) -> int:
        if self.in_kernel:
            try:
                return os.copy_file_range(self.src, self.dst, length, start, at)
            except OSError as exc:
                if exc.errno not in NO_KERNEL_COPY:
                    raise
                self.in_kernel = False
        view = self.buffer[:min(length, COPY_BUFFER)]
        got = os.preadv(self.src, [view], start)
        self.write(view[:got], at)
        return got

    def _read(self, view: memoryview, offset: int) -> None:
        if view and os.preadv(self.src, [view], offset) != len(view):
            raise LayoutError(f"{self.name} ended early (short read at {offset})")


def for_container(template: str, fmt: str, subformat: str) -> "VhdxLayout | VhdLayout":
    """The layout of an empty container that ``qemu-img create`` wrote at ``template``."""
    with open(template, "rb") as f:
        read_at = _reader(f)
        if fmt == "vhdx":
            return VhdxLayout.read(read_at, subformat, _file_size(f))
        if fmt == "vpc":
            return VhdLayout.read(read_at, subformat, _file_size(f))
        if fmt == "vmdk" and subformat == "monolithicSparse":
            return VmdkLayout.read(read_at, _file_size(f))
    raise LayoutError(f"no streaming layout for format {fmt!r}")


# ---------------------------------------------------------------- VHDX (MS-VHDX 2.5)

@dataclass
class VhdxLayout(_Blocks):
    head: bytearray            # every byte before the first payload block: headers, log, metadata and the BAT
    bat_offset: int
    block_size: int
    chunk_ratio: int           # payload blocks per sector bitmap block; their BAT entries are interleaved
    source_size: int
    next_free: int             # dynamic: where the next new block goes; fixed: the end of the file

    @classmethod
    def read(cls, read_at, subformat: str, file_size: int) -> "VhdxLayout":
        regions = vhdx_regions(read_at(VHDX_REGION_TABLE, 64 * 1024))
        bat_offset, bat_length = _vhdx_region(regions, VHDX_BAT_REGION)
        metadata_offset, metadata_length = _vhdx_region(regions, VHDX_METADATA_REGION)
        items = vhdx_metadata_items(read_at, metadata_offset)
        block_size, logical_sector, source_size = vhdx_geometry(read_at, items)
        chunk_ratio = (1 << 23) * logical_sector // block_size
        head_end = max(bat_offset + bat_length, metadata_offset + metadata_length)
        if subformat != "fixed":
            return cls(bytearray(read_at(0, file_size)), bat_offset, block_size, chunk_ratio, source_size,
                       next_free=round_up(file_size, MiB))
        # qemu-img sizes a fixed VHDX for the whole disk behind the metadata but marks its blocks "zero" and, when
        # it converts, appends them after that space (doubling the file); ce puts block n where the space is.
        data_start = file_size - source_size
        if data_start < head_end or data_start % MiB:
            raise LayoutError("the fixed VHDX template has no room for the disk after its metadata")
        blocks = -(-source_size // block_size)
        layout = cls(bytearray(read_at(0, data_start)), bat_offset, block_size, chunk_ratio, source_size,
                     next_free=data_start + blocks * block_size)       # the last block is whole, as readers expect
        for block in range(blocks):
            layout._set_entry(block, data_start + block * block_size)
        return layout

    def place(self, offset: int, length: int) -> int:
        block, within = self._block_of(offset, length)
        entry = struct.unpack_from("<Q", self.head, self._entry_offset(block))[0]
        if entry & VHDX_BLOCK_STATE_MASK == VHDX_BLOCK_FULLY_PRESENT:
            return (entry & VHDX_OFFSET_MASK) + within
        start, self.next_free = self.next_free, self.next_free + self.block_size
        self._set_entry(block, start)
        return start + within

    def _entry_offset(self, block: int) -> int:
        return self.bat_offset + 8 * (block + block // self.chunk_ratio)

    def _set_entry(self, block: int, start: int) -> None:
        struct.pack_into("<Q", self.head, self._entry_offset(block), start | VHDX_BLOCK_FULLY_PRESENT)


def _vhdx_region(regions: dict[bytes, tuple[int, int]] | None, guid: bytes) -> tuple[int, int]:
    if regions is None:
        raise LayoutError("the VHDX has no region table")
    if guid not in regions:
        raise LayoutError(f"the VHDX region table has no region {uuid.UUID(bytes_le=guid)}")
    return regions[guid]


# ---------------------------------------------------------------- VHD (Virtual Hard Disk Image Format Specification)

@dataclass
class VhdLayout(_Blocks):
    head: bytearray            # dynamic: footer copy, dynamic header and BAT; fixed: empty
    footer: bytes
    source_size: int
    block_size: int | None     # None for fixed: the data is the file's first source_size bytes
    bat_offset: int = 0
    bitmap_size: int = 0
    next_free: int = 0
    bitmaps: list[int] = field(default_factory=list)   # where each allocated block's sector bitmap goes

    @classmethod
    def read(cls, read_at, subformat: str, file_size: int) -> "VhdLayout":
        footer = read_at(file_size - SECTOR, SECTOR)
        if vhd_type(footer) is None:
            raise LayoutError("the VHD has no footer")
        source_size = vhd_virtual_size(footer)
        if subformat == "fixed":
            if file_size != source_size + SECTOR:
                raise LayoutError(f"a fixed VHD of {source_size} bytes is {file_size} bytes long")
            return cls(bytearray(), footer, source_size, None)
        header = vhd_dynamic_header(read_at, footer)
        if header is None:
            raise LayoutError("the dynamic VHD has no dynamic header")
        bat_offset, entries, block_size = header
        data_start = round_up(bat_offset + 4 * entries, SECTOR)
        if file_size != data_start + SECTOR:
            raise LayoutError("the dynamic VHD template already holds data blocks")
        return cls(bytearray(read_at(0, data_start)), footer, source_size, block_size, bat_offset,
                   bitmap_size=round_up(block_size // SECTOR // 8, SECTOR), next_free=data_start)

    def place(self, offset: int, length: int) -> int:
        if self.block_size is None:
            return offset
        block, within = self._block_of(offset, length)
        at = self.bat_offset + 4 * block
        sector, = struct.unpack_from(">I", self.head, at)
        if sector == VHD_UNALLOCATED:
            start = self.next_free
            self.next_free += self.bitmap_size + self.block_size
            struct.pack_into(">I", self.head, at, start // SECTOR)
            self.bitmaps.append(start)
        else:
            start = sector * SECTOR
        return start + self.bitmap_size + within

    def metadata(self) -> list[tuple[int, bytes]]:
        if self.block_size is None:
            return [(self.source_size, self.footer)]
        bitmap = b"\xff" * self.bitmap_size        # every sector of a written block is present in this file
        return [(0, bytes(self.head)), *((start, bitmap) for start in self.bitmaps), (self.next_free, self.footer)]

    @property
    def size(self) -> int:
        return (self.source_size if self.block_size is None else self.next_free) + SECTOR

    @property
    def overhead(self) -> int:
        return len(self.head) + SECTOR


# ---------------------------------------------------------------- VMDK monolithicSparse (VMDK 1.1, "Hosted Sparse Extents")

@dataclass
class VmdkLayout(_Blocks):
    head: bytearray            # header, descriptor, both grain directories and their (preallocated) grain tables
    tables: tuple[list[int], list[int]]     # sector of every grain table, through the directory and its copy
    entries_per_table: int
    block_size: int            # one grain
    source_size: int
    next_free: int

    @classmethod
    def read(cls, read_at, file_size: int) -> "VmdkLayout":
        header = vmdk_header(read_at)
        if not header.uncompressed_sparse:
            raise LayoutError("the VMDK is not an uncompressed hosted sparse extent")
        capacity, grain, per_table = header.capacity, header.grain_size, header.entries_per_table
        directory, redundant = header.directory, header.redundant_directory
        head = bytearray(read_at(0, file_size))
        count = -(-capacity // (grain * per_table))
        tables = tuple(list(struct.unpack_from(f"<{count}I", head, at * SECTOR)) for at in (directory, redundant))
        if any(not 0 < t * SECTOR < file_size for table in tables for t in table):
            raise LayoutError("the VMDK template's grain tables are not preallocated")
        return cls(head, tables, per_table, grain * SECTOR, capacity * SECTOR,
                   next_free=round_up(file_size, SECTOR))

    def place(self, offset: int, length: int) -> int:
        grain, within = self._block_of(offset, length)
        table, index = divmod(grain, self.entries_per_table)
        at = [self.tables[0][table] * SECTOR + 4 * index, self.tables[1][table] * SECTOR + 4 * index]
        sector, = struct.unpack_from("<I", self.head, at[0])
        if not sector:
            sector, self.next_free = self.next_free // SECTOR, self.next_free + self.block_size
            for where in at:
                struct.pack_into("<I", self.head, where, sector)
        return sector * SECTOR + within


# ---------------------------------------------------------------- container templates

def _reader(f):
    def read_at(offset: int, length: int) -> bytes:
        data = os.pread(f.fileno(), length, offset)
        if len(data) != length:
            raise LayoutError(f"the container template ends before byte {offset + length}")
        return data
    return read_at


def _file_size(f) -> int:
    return os.fstat(f.fileno()).st_size

