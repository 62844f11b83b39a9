"""NTFS volume flags, read straight from the volume (ntfs-3g ignores them).

Windows sets VOLUME_IS_DIRTY in $Volume's $VOLUME_INFORMATION when it crashes or is snapshotted while running,
and runs chkdsk at the next boot. ntfs-3g mounts such a volume read-write without a word (seen here), so ce
reads the flag itself before it writes. Layout: boot sector -> $MFT (and its mirror $MFTMirr) -> file record 3
($Volume) -> attribute 0x70 -> flags at offset 10 of the resident value.
"""
from __future__ import annotations

import struct
from typing import Callable

from .errors import GuestError

VOLUME_RECORD = 3
VOLUME_INFORMATION = 0x70
END_OF_ATTRIBUTES = 0xFFFFFFFF
VOLUME_IS_DIRTY = 0x0001

ReadAt = Callable[[int, int], bytes]     # (offset, size) -> bytes, relative to the start of the volume


def volume_flag_offsets(read_at: ReadAt) -> list[int]:
    """Byte offsets (from the volume start) of the $Volume flags field in $MFT and in $MFTMirr."""
    boot = read_at(0, 512)
    if boot[3:11] != b"NTFS    ":
        raise GuestError("not an NTFS boot sector")
    bytes_per_sector = struct.unpack_from("<H", boot, 0x0B)[0]
    cluster = bytes_per_sector * boot[0x0D]
    mft_lcn, mirror_lcn = struct.unpack_from("<QQ", boot, 0x30)
    per_record = struct.unpack_from("<b", boot, 0x40)[0]
    record_size = 1 << -per_record if per_record < 0 else per_record * cluster
    offsets = []
    for lcn in (mft_lcn, mirror_lcn):
        record_start = lcn * cluster + VOLUME_RECORD * record_size
        field = _flags_field(read_at(record_start, record_size))
        offsets.append(record_start + field)
    return offsets


def _flags_field(record: bytes) -> int:
    if record[:4] != b"FILE":
        raise GuestError("$Volume file record is damaged (no FILE signature)")
    at = struct.unpack_from("<H", record, 0x14)[0]
    while at + 8 <= len(record):
        kind, length = struct.unpack_from("<II", record, at)
        if kind == END_OF_ATTRIBUTES or length == 0:
            break
        if kind == VOLUME_INFORMATION:
            value_offset = struct.unpack_from("<H", record, at + 0x14)[0]
            return at + value_offset + 10
        at += length
    raise GuestError("$Volume has no volume information attribute")


def volume_is_dirty(read_at: ReadAt) -> bool:
    offset = volume_flag_offsets(read_at)[0]
    return bool(struct.unpack("<H", read_at(offset, 2))[0] & VOLUME_IS_DIRTY)


EVERYONE_SID = bytes.fromhex("010100000000000100000000")          # S-1-1-0
FILE_ALL_ACCESS = 0x001F01FF


def grants_everyone_full_control(descriptor: bytes) -> bool:
    """Does a self-relative security descriptor (ntfs-3g's system.ntfs_acl) let Everyone do anything? That is
    what ntfs-3g gives the files it creates, so replacing a file with such a descriptor widens nothing."""
    if len(descriptor) < 20:
        return False
    dacl = struct.unpack_from("<I", descriptor, 16)[0]
    if not dacl or dacl + 8 > len(descriptor):
        return not dacl                                     # no DACL at all: everyone has full access
    count, offset = struct.unpack_from("<H", descriptor, dacl + 4)[0], dacl + 8
    for _ in range(count):
        ace_type, _flags, size = struct.unpack_from("<BBH", descriptor, offset)
        mask = struct.unpack_from("<I", descriptor, offset + 4)[0]
        sid = descriptor[offset + 8:offset + size]
        if ace_type == 0 and sid == EVERYONE_SID and mask & FILE_ALL_ACCESS == FILE_ALL_ACCESS:
            return True
        offset += size
    return False
