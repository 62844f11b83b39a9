"""A new, empty hive file (hivex cannot create one)."""
from __future__ import annotations

import os
import struct
from pathlib import Path

from .header import BASE_BLOCK_SIZE, CHECKSUM_OFFSET, HBIN_SIZE, HEADER_LAYOUT, header_checksum

_ROOT_FLAGS = 0x2C               # HIVE_ENTRY | NO_DELETE | COMP_NAME (name stored in 8 bits)
_NO_CELL = 0xFFFFFFFF
_KEY_READ, _KEY_ALL_ACCESS = 0x20019, 0xF003F
_CONTAINER_INHERIT_ACE = 0x02
_SE_DACL_PRESENT, _SE_SELF_RELATIVE = 0x0004, 0x8000


def create_empty_hive(path: str | os.PathLike, root_name: str = "ROOT") -> Path:
    """Write a minimal valid 8 KiB hive (hivex cannot create one): base block + one hbin holding the root key
    first (regipy assumes the root is the first cell), its security cell (hivex needs one to add keys) and a
    free cell filling the rest of the bin."""
    if not (0 < len(root_name) <= 255 and root_name.isascii() and "\\" not in root_name):
        raise ValueError(f"root name must be 1-255 ASCII characters without backslashes, not {root_name!r}")
    bins = _first_bin(root_name.encode("ascii"))
    Path(path).write_bytes(_base_block(root_offset=0x20, hbins_size=len(bins)) + bins)
    return Path(path)


def _base_block(root_offset: int, hbins_size: int) -> bytes:
    block = bytearray(BASE_BLOCK_SIZE)
    # signature, sequences 1/1 (clean), timestamp, version 1.5, primary file, direct memory load format,
    # root cell, hive bins size, clustering factor
    HEADER_LAYOUT.pack_into(block, 0, b"regf", 1, 1, 0, 1, 5, 0, 1, root_offset, hbins_size)
    struct.pack_into("<I", block, HEADER_LAYOUT.size, 1)
    struct.pack_into("<I", block, CHECKSUM_OFFSET, header_checksum(block))
    return bytes(block)


def _first_bin(root_name: bytes) -> bytes:
    header = struct.pack("<4sIIIIQI", b"hbin", 0, HBIN_SIZE, 0, 0, 0, 0)
    nk_offset = len(header)
    nk_size = _cell_size(_nk_payload(root_name, 0))
    sk_offset = nk_offset + nk_size
    root = _cell(_nk_payload(root_name, sk_offset))
    security = _cell(_sk_payload(sk_offset, _default_security_descriptor()))
    used = len(header) + len(root) + len(security)
    free = struct.pack("<i", HBIN_SIZE - used).ljust(HBIN_SIZE - used, b"\0")
    return header + root + security + free


def _nk_payload(name: bytes, sk_offset: int) -> bytes:
    return struct.pack(
        "<2sHQ15IHH", b"nk", _ROOT_FLAGS, 0,
        0, _NO_CELL,                 # spare, parent
        0, 0, _NO_CELL, _NO_CELL,    # subkeys, volatile subkeys, their lists
        0, _NO_CELL,                 # values, value list
        sk_offset, _NO_CELL,         # security cell, class name
        0, 0, 0, 0, 0,               # max name/class/value-name/value-data lengths, workvar
        len(name), 0) + name


def _sk_payload(own_offset: int, descriptor: bytes) -> bytes:
    # The only sk cell links to itself (flink = blink); hivex bumps the refcount for each key sharing it.
    return struct.pack("<2sHIIII", b"sk", 0, own_offset, own_offset, 1, len(descriptor)) + descriptor


def _default_security_descriptor() -> bytes:
    """Self-relative SD: owner Administrators, group SYSTEM, DACL read for Everyone, full for SYSTEM and
    Administrators, inherited by subkeys."""
    everyone, system, administrators = _sid(1, 0), _sid(5, 18), _sid(5, 32, 544)
    aces = _ace(_KEY_READ, everyone) + _ace(_KEY_ALL_ACCESS, system) + _ace(_KEY_ALL_ACCESS, administrators)
    dacl = struct.pack("<BBHHH", 2, 0, 8 + len(aces), 3, 0) + aces
    dacl_offset = 20
    owner_offset = dacl_offset + len(dacl)
    group_offset = owner_offset + len(administrators)
    header = struct.pack("<BBHIIII", 1, 0, _SE_SELF_RELATIVE | _SE_DACL_PRESENT,
                         owner_offset, group_offset, 0, dacl_offset)
    return header + dacl + administrators + system


def _sid(authority: int, *subauthorities: int) -> bytes:
    return (struct.pack("<BB", 1, len(subauthorities)) + authority.to_bytes(6, "big")
            + struct.pack(f"<{len(subauthorities)}I", *subauthorities))


def _ace(mask: int, sid: bytes) -> bytes:
    return struct.pack("<BBHI", 0, _CONTAINER_INHERIT_ACE, 8 + len(sid), mask) + sid   # ACCESS_ALLOWED_ACE


def _cell_size(payload: bytes) -> int:
    return (4 + len(payload) + 7) & ~7


def _cell(payload: bytes) -> bytes:
    size = _cell_size(payload)
    return struct.pack("<i", -size) + payload.ljust(size - 4, b"\0")
