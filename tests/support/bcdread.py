"""Reading a BCD store without ce: regipy (an independent regf parser) and a parser of the 88-byte partition device
written from the reference's byte table (uefi-differencing-diagnostics.md §6), not ce's own decoder."""
from __future__ import annotations

import struct
import uuid

from regipy.registry import RegistryHive

BOOTMGR = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}"
MEMDIAG = "{b2721d73-1db4-4c62-bf78-c548a880142d}"


def parse_partition_device(blob: bytes) -> dict:
    """The reference's table, read field by field."""
    assert len(blob) == 88
    assert blob[0:16] == bytes(16)                                   # no additional options object
    assert struct.unpack_from("<IIII", blob, 16) == (6, 0, 0x48, 0)  # partition device, flags, size, reserved
    assert struct.unpack_from("<I", blob, 48)[0] == 0                # local disk
    assert blob[72:88] == bytes(16)
    style = struct.unpack_from("<I", blob, 52)[0]
    if style == 0:
        return {"partition": str(uuid.UUID(bytes_le=blob[32:48])).upper(),
                "disk": str(uuid.UUID(bytes_le=blob[56:72])).upper()}
    assert style == 1 and blob[40:48] == bytes(8) and blob[60:72] == bytes(12)
    return {"offset": struct.unpack_from("<Q", blob, 32)[0], "signature": struct.unpack_from("<I", blob, 56)[0]}


def element(hive: RegistryHive, guid: str, element_id: int):
    return hive.get_key(f"\\Objects\\{guid}\\Elements\\{element_id:08X}").get_value("Element")


def object_type(hive: RegistryHive, guid: str) -> int:
    return hive.get_key(f"\\Objects\\{guid}\\Description").get_value("Type")
