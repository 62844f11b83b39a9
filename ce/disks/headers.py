"""Container headers read by hand: the VHD footer and dynamic header, the VHDX region table and metadata, the VMDK
sparse extent header. Everything here reads through ``read_at(offset, length)``, so it works the same on a local
file, a block device or a file on a share.

qemu-img reports none of these facts (or reports them wrong): a fixed VHD probes as raw, and neither ``info`` nor
``check`` says whether a VHD or VHDX is fixed, dynamic or differencing. The streamed export (ce.disks.layouts) also
reads the empty containers qemu-img makes, to place blocks in them.
"""
from __future__ import annotations

import struct
import uuid
from typing import NamedTuple

from ..errors import DiskUnreadable

SECTOR = 512

VHD_COOKIE = b"conectix"
VHD_DYNAMIC_COOKIE = b"cxsparse"
VHD_TYPES = {2: "fixed", 3: "dynamic", 4: "differencing"}

VHDX_SIGNATURE = b"vhdxfile"
VHDX_REGION_TABLE = 192 * 1024
VHDX_METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
VHDX_BAT_REGION = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
VHDX_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
VHDX_VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
VHDX_LOGICAL_SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F").bytes_le
VHDX_LEAVE_BLOCKS_ALLOCATED, VHDX_HAS_PARENT = 1, 2

VMDK_HEADER = struct.Struct("<4sIIQQQQIQQQ")       # magic .. overHead of the SparseExtentHeader (VMDK 1.1, p. 8)
VMDK_MAGIC = b"KDMV"
VMDK_COMPRESSED = 1 << 16


# ---------------------------------------------------------------- VHD (Virtual Hard Disk Image Format Specification)

def vhd_type(footer: bytes) -> str | None:
    """fixed / dynamic / differencing (or "unknown") from a VHD footer; None when ``footer`` is not one."""
    if len(footer) < SECTOR or footer[:8] != VHD_COOKIE:
        return None
    return VHD_TYPES.get(struct.unpack_from(">I", footer, 60)[0], "unknown")


def vhd_virtual_size(footer: bytes) -> int:
    """The "current size" of a VHD footer: the bytes the disk holds."""
    return struct.unpack_from(">Q", footer, 48)[0]


def vhd_dynamic_header(read_at, footer: bytes) -> tuple[int, int, int] | None:
    """(BAT offset, BAT entries, block size) from the dynamic header the footer points to; None without one."""
    header = read_at(struct.unpack_from(">Q", footer, 16)[0], 1024)
    if header[:8] != VHD_DYNAMIC_COOKIE:
        return None
    bat_offset, = struct.unpack_from(">Q", header, 16)
    entries, block_size = struct.unpack_from(">II", header, 28)
    return bat_offset, entries, block_size


# ---------------------------------------------------------------- VHDX (MS-VHDX 2.2 - 2.6)

def vhdx_regions(table: bytes) -> dict[bytes, tuple[int, int]] | None:
    """{region GUID (bytes_le): (file offset, length)} from a region table; None when ``table`` is not one."""
    if table[:4] != b"regi":
        return None
    regions: dict[bytes, tuple[int, int]] = {}
    for i in range(struct.unpack_from("<I", table, 8)[0]):
        entry = table[16 + 32 * i:48 + 32 * i]
        regions.setdefault(entry[:16], struct.unpack_from("<QI", entry, 16))
    return regions


def vhdx_metadata_items(read_at, metadata: int) -> dict[bytes, int]:
    """{item GUID (bytes_le): absolute file offset of its data} from the metadata table at ``metadata``."""
    table = read_at(metadata, 64 * 1024)
    if table[:8] != b"metadata":
        return {}
    entries = (table[32 + 32 * i:64 + 32 * i] for i in range(struct.unpack_from("<H", table, 10)[0]))
    return {entry[:16]: metadata + struct.unpack_from("<I", entry, 16)[0] for entry in entries}


def vhdx_geometry(read_at, items: dict[bytes, int]) -> tuple[int, int, int]:
    """(block size, logical sector size, virtual size) from the metadata items ``vhdx_metadata_items`` found."""
    block_size, _flags = struct.unpack("<II", read_at(items[VHDX_FILE_PARAMETERS], 8))
    logical_sector = struct.unpack("<I", read_at(items[VHDX_LOGICAL_SECTOR_SIZE], 4))[0]
    virtual_size = struct.unpack("<Q", read_at(items[VHDX_VIRTUAL_DISK_SIZE], 8))[0]
    return block_size, logical_sector, virtual_size


def vhdx_facts(read_at) -> tuple[str | None, int | None]:
    """(fixed / dynamic / differencing, virtual size) from the VHDX metadata items (MS-VHDX 2.6.2)."""
    regions = vhdx_regions(read_at(VHDX_REGION_TABLE, 64 * 1024)) or {}
    if VHDX_METADATA_REGION not in regions:
        return None, None
    items = vhdx_metadata_items(read_at, regions[VHDX_METADATA_REGION][0])
    kind = size = None
    if VHDX_FILE_PARAMETERS in items:
        flags = struct.unpack("<I", read_at(items[VHDX_FILE_PARAMETERS] + 4, 4))[0]
        kind = ("differencing" if flags & VHDX_HAS_PARENT
                else "fixed" if flags & VHDX_LEAVE_BLOCKS_ALLOCATED else "dynamic")
    if VHDX_VIRTUAL_DISK_SIZE in items:
        size = struct.unpack("<Q", read_at(items[VHDX_VIRTUAL_DISK_SIZE], 8))[0]
    return kind, size


# ---------------------------------------------------------------- VMDK (VMDK 1.1, "Hosted Sparse Extents")

class VmdkHeader(NamedTuple):
    magic: bytes
    version: int
    flags: int
    capacity: int              # sectors
    grain_size: int            # sectors
    descriptor_offset: int
    descriptor_size: int
    entries_per_table: int     # grain table entries per grain table
    redundant_directory: int   # sector of the redundant grain directory
    directory: int             # sector of the grain directory
    overhead: int

    @property
    def uncompressed_sparse(self) -> bool:
        return self.magic == VMDK_MAGIC and not self.flags & VMDK_COMPRESSED


def vmdk_header(read_at) -> VmdkHeader:
    return VmdkHeader(*VMDK_HEADER.unpack(read_at(0, VMDK_HEADER.size)))


# ---------------------------------------------------------------- either VHD or VHDX

def header_facts(read_at, size: int) -> tuple[str, str, int]:
    """(qemu format, subformat, virtual size) of a VHD or VHDX read through ``read_at(offset, length)``.

    For images that are not on a local disk (a share): reads only the footer or the metadata region."""
    if read_at(0, 8) == VHDX_SIGNATURE:
        kind, virtual = vhdx_facts(read_at)
        if kind and virtual:
            return "vhdx", kind, virtual
        raise DiskUnreadable("the VHDX has no readable metadata (file parameters and virtual disk size)")
    footer = read_at(max(size - SECTOR, 0), SECTOR)
    kind = vhd_type(footer)
    if kind is None:
        raise DiskUnreadable("it is neither a VHD (no 'conectix' footer) nor a VHDX (no 'vhdxfile' signature)")
    return "vpc", kind, vhd_virtual_size(footer)
