"""``SYSTEM\\MountedDevices`` from MBR form to GPT form, as MBR2GPT rewrites it so drive letters survive: a value of
this disk in MBR form (12 bytes: u32 disk signature + u64 partition byte offset) becomes ``DMIO:ID:`` + the
partition's GPT GUID (bytes_le). Values of other disks and other device kinds are left alone; a value that is
neither is reported, never guessed at (the hive comes from the image)."""
from __future__ import annotations

import struct
import uuid

MBR_FORM = struct.Struct("<IQ")
GPT_PREFIX = b"DMIO:ID:"
GPT_FORM_SIZE = len(GPT_PREFIX) + 16


def mounted_devices_to_gpt(values: dict[str, bytes], disk_signature: int,
                           partition_guid_by_offset: dict[int, str]) -> dict[str, tuple[bytes, bytes]]:
    """value name → (old data, new data) for every value naming a partition of this disk (by its offset)."""
    changes = {}
    for name, data in values.items():
        located = _mbr_location(data)
        if located is None or located[0] != disk_signature or located[1] not in partition_guid_by_offset:
            continue
        guid = uuid.UUID(partition_guid_by_offset[located[1]])
        changes[name] = (bytes(data), GPT_PREFIX + guid.bytes_le)
    return changes


def mounted_devices_problems(values: dict[str, bytes], disk_signature: int,
                             partition_guid_by_offset: dict[int, str]) -> list[str]:
    """Values left unconverted that look wrong: not binary, too short to be a device id, a truncated GPT form, or
    this disk's MBR form at an offset where no partition starts (a stale letter)."""
    problems = []
    for name, data in values.items():
        if not isinstance(data, (bytes, bytearray)):
            problems.append(f"{name}: not binary data ({type(data).__name__})")
        elif bytes(data).startswith(GPT_PREFIX) and len(data) != GPT_FORM_SIZE:
            problems.append(f"{name}: a GPT-form id of {len(data)} bytes ({GPT_FORM_SIZE} expected)")
        elif len(data) < MBR_FORM.size:
            problems.append(f"{name}: {len(data)} bytes, too short for a device id")
        elif (located := _mbr_location(data)) and located[0] == disk_signature \
                and located[1] not in partition_guid_by_offset:
            problems.append(f"{name}: names offset {located[1]} of this disk, where no partition starts")
    return problems


def _mbr_location(data: object) -> tuple[int, int] | None:
    """(disk signature, byte offset) of a 12-byte MBR-form value, else None."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != MBR_FORM.size:
        return None
    return MBR_FORM.unpack(bytes(data))
