"""A hive file's base block, checked before hivex opens the file: hivex's errors say only ``strerror``, and it would
misread or silently damage a truncated, damaged or dirty hive."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ..errors import HiveCorrupt, HiveDirty, HiveMissing

BASE_BLOCK_SIZE = 0x1000
HBIN_SIZE = 0x1000
MIN_HIVE_SIZE = BASE_BLOCK_SIZE + HBIN_SIZE
CHECKSUM_OFFSET = 0x1FC
BIG_VALUE_LIMIT = 16344          # larger values must be stored as "db" records in hive format 1.4+
HEADER_LAYOUT = struct.Struct("<4sIIQIIIIII")
REPAIR_ADVICE = "restore it from a backup or repair the image in Windows, then retry"


@dataclass(frozen=True)
class HiveHeader:
    primary_sequence: int
    secondary_sequence: int
    major_version: int
    minor_version: int
    root_offset: int
    hbins_size: int
    file_size: int

    @property
    def version(self) -> str:
        return f"{self.major_version}.{self.minor_version}"


def header_checksum(block: bytes) -> int:
    checksum = 0
    for (word,) in struct.iter_unpack("<I", block[:CHECKSUM_OFFSET]):
        checksum ^= word
    return checksum


def check_header(path: str | os.PathLike, label: str | None = None, allow_dirty: bool = False) -> HiveHeader:
    """Refuse a file hivex would misread or silently damage; ``label`` names the file in messages.
    ``allow_dirty`` accepts a hive Windows did not save cleanly: fine for reading (recent changes may be
    missing), never for editing."""
    label = label or str(path)
    try:
        with open(path, "rb") as f:
            block = f.read(BASE_BLOCK_SIZE + 4)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise HiveMissing(f"{label} does not exist") from None
    if block[:4] != b"regf":
        raise HiveCorrupt(f"{label} is not a registry hive (no 'regf' signature); {REPAIR_ADVICE}")
    if size < MIN_HIVE_SIZE:
        raise HiveCorrupt(f"{label} is truncated ({size} bytes, a hive has at least {MIN_HIVE_SIZE}); {REPAIR_ADVICE}")
    _, seq1, seq2, _, major, minor, file_type, _, root, hbins = HEADER_LAYOUT.unpack_from(block)
    _check_integrity(label, block, size, major, file_type, hbins)
    if seq1 != seq2 and not allow_dirty:
        raise HiveDirty(
            f"{label} was not saved cleanly (sequence numbers {seq1} and {seq2} differ): Windows would replay its "
            ".LOG1/.LOG2 transaction logs, which ce cannot do, so edits would lose data; boot the image once, shut "
            "it down cleanly (not hibernate or Fast Startup), then retry")
    return HiveHeader(seq1, seq2, major, minor, root, hbins, size)


def _check_integrity(label: str, block: bytes, size: int, major: int, file_type: int, hbins: int) -> None:
    (stored,) = struct.unpack_from("<I", block, CHECKSUM_OFFSET)
    if stored not in _accepted_checksums(header_checksum(block)):
        raise HiveCorrupt(
            f"{label} has a damaged header (checksum mismatch); boot the image once so Windows can recover the hive "
            "from its logs, shut it down cleanly, then retry")
    if major != 1:
        raise HiveCorrupt(f"{label} has unsupported hive format version {major}; {REPAIR_ADVICE}")
    if file_type != 0:
        raise HiveCorrupt(f"{label} is a transaction log, not a primary hive file; open the hive itself")
    if BASE_BLOCK_SIZE + hbins > size:
        raise HiveCorrupt(
            f"{label} is truncated (its header declares {hbins} bytes of hive bins, the file holds "
            f"{size - BASE_BLOCK_SIZE}); {REPAIR_ADVICE}")
    if block[BASE_BLOCK_SIZE:] != b"hbin":
        raise HiveCorrupt(f"{label} has no hive bin after its header; {REPAIR_ADVICE}")


def _accepted_checksums(xor: int) -> set[int]:
    # Windows stores 1 for a XOR of 0 and 0xFFFFFFFE for 0xFFFFFFFF; hivex stores the plain XOR.
    return {xor, {0: 1, 0xFFFFFFFF: 0xFFFFFFFE}.get(xor, xor)}
