"""Container headers read by hand: the VHD footer and dynamic header, the VHDX region table and metadata, the VMDK
sparse extent header. Everything here reads through ``read_at(offset, length)``, so it works the same on a local
file, a block device or a file on a share.

qemu-img reports none of these facts (or reports them wrong): a fixed VHD probes as raw, and neither ``info`` nor
``check`` says whether a VHD or VHDX is fixed, dynamic or differencing. The streamed export (ce.disks.layouts) also
reads the empty containers qemu-img makes, to place blocks in them.
"""
from __future__ import annotations

import functools
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
VHDX_PHYSICAL_SECTOR_SIZE = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556").bytes_le
VHDX_PAGE83_DATA = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746").bytes_le
VHDX_PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le
VHDX_LEAVE_BLOCKS_ALLOCATED, VHDX_HAS_PARENT = 1, 2
VHDX_HEADERS = (64 * 1024, 128 * 1024)     # header 1 and 2, 4 KiB each (MS-VHDX 2.2.2)
VHDX_HEADER_SIZE = 4096

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


def vhd_unique_id(footer: bytes) -> bytes:
    """The footer's UniqueId (16 raw bytes): what a differencing child records as its parent's identifier."""
    return footer[68:84]


# ---------------------------------------------------------------- VHDX (MS-VHDX 2.2 - 2.6)

def crc32c(data) -> int:
    """CRC-32C (Castagnoli, reflected 0x82F63B78), the checksum of VHDX headers, region tables and log entries
    (MS-VHDX 2.2.2); check value ``crc32c(b"123456789") == 0xE3069283``. Pure Python: it only ever covers a few
    hundred KiB of metadata."""
    table = _crc32c_table()
    crc = 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@functools.lru_cache(maxsize=1)
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return tuple(table)


def vhdx_current_header(read_at) -> bytes:
    """The current header (MS-VHDX 2.2.2.1): of the two 4 KiB headers with the ``head`` signature and a valid
    CRC-32C, the one with the higher SequenceNumber. Its DataWriteGuid (bytes 32-48) is what a child's
    ``parent_linkage`` names -- qemu-made files carry different DataWriteGuids in the two headers."""
    valid = []
    for offset in VHDX_HEADERS:
        header = bytearray(read_at(offset, VHDX_HEADER_SIZE))
        if header[:4] != b"head":
            continue
        checksum, sequence = struct.unpack_from("<IQ", header, 4)
        header[4:8] = bytes(4)
        if crc32c(header) == checksum:
            header[4:8] = struct.pack("<I", checksum)
            valid.append((sequence, bytes(header)))
    if not valid:
        raise DiskUnreadable("the VHDX has no valid header (signature and CRC-32C) at 64 KiB or 128 KiB")
    return max(valid)[1]


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
