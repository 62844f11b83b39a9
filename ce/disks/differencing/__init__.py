r"""Differencing children written by ce: a VHDX child of a VHDX parent, a VHD child of a VHD parent.

qemu-img cannot create VHD or VHDX children, and reads them wrong (a VHDX child is refused, a VHD child reads its
parent as zeros), so ce writes them itself. The parent is only ever *read*, through ``read_at(offset, length)``
(a local file, or a file on a share): never opened for writing, because any user-visible write changes a VHDX's
DataWriteGuid and a VHD's timestamp, which breaks every child and vDisk version that names it.

The child holds the *changed extents* of the merged disk -- ``(offset, length)`` byte ranges, in the real
operation the data extents of a local qcow2 overlay of the parent -- read through ``read_merged(offset, length)``,
a reader of the merged disk (the overlay, which reads the parent where nothing changed). It is asked for the
changed extents rounded out to whole logical sectors (4 KiB for VHD, see below) and, in a grown child, for the
parent's part of the block that straddles the parent's end; never for anything else. The parent's own file is
read only by ``parent_facts`` (its headers). The child goes to a sink with ``write_at(offset, data)`` --
``FileSink`` for a local file; a share's writer for ``NAME.partial`` on an SMB share -- that must start empty:
bytes never written (the empty log, unused metadata space, the rest of a partly written block past the parent's
end) are the file's zeros. Every byte is written in one pass (data blocks, then bitmaps, BAT, metadata, region
tables, and the headers last), so the file is complete when ``write_child`` returns; renaming ``NAME.partial``
to ``NAME`` is the caller's.

    with open(parent, "rb") as f:
        facts = parent_facts(lambda offset, length: os.pread(f.fileno(), length, offset), file_size, mtime=mtime)
    summary = write_child(facts, extents, read_merged, sink, parent_name="base.vhdx",
                          parent_absolute=r"\\?\UNC\server\share\store\base.vhdx", virtual_size=None)

The formats' layouts are in ``vhdx`` and ``vhd`` of this package; ``blocks`` holds what they share.

Refused (nothing written): a parent that is itself a child, a changed extent out of the child's bounds, empty or
overlapping extents, a block size that MS-VHDX or the VHD format does not allow.
"""
from __future__ import annotations

import struct
import uuid
from typing import Callable, Iterable

from ...errors import LayoutError, UnsupportedFormat
from ..headers import (SECTOR, VHDX_METADATA_REGION, VHDX_PAGE83_DATA, VHDX_PHYSICAL_SECTOR_SIZE, VHDX_REGION_TABLE,
                       header_facts, vhd_dynamic_header, vhd_unique_id, vhdx_current_header, vhdx_geometry,
                       vhdx_metadata_items, vhdx_regions)
from .blocks import DEFAULT_BLOCK, KiB, MiB, ChildSummary, FileSink, ParentFacts, Sink, changed_runs
from .vhd import VHD_GRANULE, VhdChild
from .vhdx import FULLY_PRESENT, NOT_PRESENT, PARTIALLY_PRESENT, ZERO, VhdxChild

__all__ = ["ChildSummary", "FileSink", "ParentFacts", "Sink", "changed_runs", "parent_facts", "write_child",
           "FULLY_PRESENT", "NOT_PRESENT", "PARTIALLY_PRESENT", "ZERO"]


def parent_facts(read_at, size: int, *, mtime: float | None = None) -> ParentFacts:
    """The facts of a VHDX or VHD parent of ``size`` bytes (file length) read through ``read_at``; ``mtime`` (the
    file's modification time, seconds) is needed for a VHD parent. A parent that is itself a child is refused."""
    fmt, kind, virtual_size = header_facts(read_at, size)
    if kind == "differencing":
        raise UnsupportedFormat("the parent is itself a differencing disk: ce writes children of base disks only "
                                "(merge the chain first)")
    if fmt == "vhdx":
        regions = vhdx_regions(read_at(VHDX_REGION_TABLE, 64 * KiB)) or {}
        items = vhdx_metadata_items(read_at, regions[VHDX_METADATA_REGION][0])
        block_size, logical, _ = vhdx_geometry(read_at, items)
        physical = struct.unpack("<I", read_at(items[VHDX_PHYSICAL_SECTOR_SIZE], 4))[0] \
            if VHDX_PHYSICAL_SECTOR_SIZE in items else logical
        page83 = read_at(items[VHDX_PAGE83_DATA], 16) if VHDX_PAGE83_DATA in items else uuid.uuid4().bytes_le
        identifier = vhdx_current_header(read_at)[32:48]
        return ParentFacts("vhdx", virtual_size, identifier, logical, physical, block_size, page83)
    if mtime is None:
        raise UnsupportedFormat("a VHD child records its parent's modification time: give the parent's mtime")
    footer = read_at(size - SECTOR, SECTOR)
    dynamic = vhd_dynamic_header(read_at, footer) if kind == "dynamic" else None
    return ParentFacts("vpc", virtual_size, vhd_unique_id(footer), block_size=dynamic[2] if dynamic else None,
                       footer=footer, mtime=mtime)


def write_child(parent: ParentFacts, changed_extents: Iterable[tuple[int, int]],
                read_merged: Callable[[int, int], bytes], sink: Sink, *, parent_name: str,
                parent_absolute: str | None = None, virtual_size: int | None = None, block_size: int | None = None,
                past_parent: str = "zero") -> ChildSummary:
    """Write a differencing child of ``parent`` (``parent_facts``) holding ``changed_extents`` of the merged disk
    to ``sink``; VHDX for a VHDX parent, VHD for a VHD parent. ``parent_name`` is the parent's file name (the child
    is written beside it); ``parent_absolute`` its absolute Win32 path where known; ``virtual_size`` (VHDX only)
    may exceed the parent's. See the module docstring for the layout and ``past_parent``."""
    if not parent_name or "\\" in parent_name or "/" in parent_name:
        raise LayoutError(f"the parent's name must be a bare file name, not {parent_name!r}")
    if past_parent not in ("zero", "allocated"):
        raise LayoutError(f"past_parent must be 'zero' or 'allocated', not {past_parent!r}")
    size = parent.virtual_size if virtual_size is None else virtual_size
    if size < parent.virtual_size:
        raise LayoutError(f"a child of {size} bytes is smaller than its parent ({parent.virtual_size} bytes)")
    if parent.format == "vhdx":
        if size % parent.logical_sector:
            raise LayoutError(f"the child's size {size} is not a multiple of the {parent.logical_sector}-byte "
                              "logical sector")
        block = block_size or DEFAULT_BLOCK
        if not (MiB <= block <= 256 * MiB and block & (block - 1) == 0):
            raise LayoutError(f"a VHDX block size is a power of two from 1 to 256 MiB, not {block}")
        runs = changed_runs(changed_extents, size, parent.logical_sector)
        return VhdxChild(parent, runs, read_merged, sink, size, block, past_parent) \
            .run(parent_name, parent_absolute)
    if size != parent.virtual_size:
        raise UnsupportedFormat("a VHD child must have its parent's size (Windows refuses others with "
                                "ERROR_VHD_CHILD_PARENT_SIZE_MISMATCH): write a VHDX to grow the disk")
    block = block_size or parent.block_size or DEFAULT_BLOCK
    if not (VHD_GRANULE * 8 <= block <= 256 * MiB and block & (block - 1) == 0):
        raise LayoutError(f"a VHD block size is a power of two from 32 KiB to 256 MiB, not {block}")
    runs = changed_runs(changed_extents, size, VHD_GRANULE)
    return VhdChild(parent, runs, read_merged, sink, size, block).run(parent_name, parent_absolute)
