"""The device blob of BCD device elements (11000001 ApplicationDevice, 21000001 OsDevice, ...): 16 bytes of options
object GUID, then a boot-library device descriptor. A partition device is 88 bytes (reference §6, verified
byte-for-byte against a real UEFI store):

    0  options GUID          16 | 16 device type (6 = partition) | 20 flags | 24 size from offset 16 (0x48) | 28 0
    32 GPT: partition unique GUID (bytes_le); MBR: u64 partition byte offset + 8 zero bytes
    48 local device type (0 = local disk) | 52 partition style (0 GPT, 1 MBR)
    56 GPT: disk GUID (bytes_le); MBR: u32 disk signature + 12 zero bytes | 72 16 zero bytes

A store read from an image is hostile input: ``decode_device`` bounds every read and reports what it cannot parse.
"""
from __future__ import annotations

import struct
import uuid

PARTITION_DEVICE_SIZE = 88
PARTITION_DEVICE = 6
LEGACY_PARTITION_DEVICE = 2
STYLE_GPT, STYLE_MBR = 0, 1
DEVICE_TYPES = {0: "disk", 2: "legacy_partition", 3: "serial", 4: "udp", 5: "boot", 6: "partition", 7: "vmbus",
                8: "locate", 9: "uri", 10: "composite", 11: "cimfs"}
LOCAL_TYPES = {0: "local", 1: "floppy", 2: "cdrom", 3: "ramdisk", 5: "file", 6: "virtual_disk"}
_HEADER = struct.Struct("<16sIIII")          # options GUID, device type, flags, size, reserved
_DESCRIPTOR_SIZE = PARTITION_DEVICE_SIZE - 16


def encode_gpt_partition(partition_guid: str, disk_guid: str) -> bytes:
    """The device of a GPT partition: its unique GUID and its disk's GUID (both as in the GPT)."""
    return _partition(uuid.UUID(partition_guid).bytes_le, STYLE_GPT, uuid.UUID(disk_guid).bytes_le)


def encode_mbr_partition(byte_offset: int, disk_signature: int) -> bytes:
    """The device of an MBR partition: its start in bytes and the disk signature (MBR offset 440)."""
    if not 0 <= byte_offset < 1 << 64 or not 0 <= disk_signature < 1 << 32:
        raise ValueError(f"MBR partition device out of range: offset {byte_offset}, signature {disk_signature:#x}")
    return _partition(struct.pack("<Q8x", byte_offset), STYLE_MBR, struct.pack("<I12x", disk_signature))


def _partition(identity: bytes, style: int, disk: bytes) -> bytes:
    head = _HEADER.pack(bytes(16), PARTITION_DEVICE, 0, _DESCRIPTOR_SIZE, 0)
    return head + identity + struct.pack("<II", 0, style) + disk + bytes(16)


def decode_device(blob: bytes) -> dict:
    """What a device element names, as a dict with ``kind``: ``gpt_partition`` (partition_guid, disk_guid),
    ``mbr_partition`` (offset, disk_signature), another known device type (``device_type`` named), or
    ``unknown`` / ``malformed`` with a ``problem``. Never raises on bad bytes."""
    blob = bytes(blob)
    if len(blob) < _HEADER.size:
        return {"kind": "malformed", "problem": f"{len(blob)} bytes, shorter than a device header ({_HEADER.size})"}
    options, device_type, flags, size, _ = _HEADER.unpack_from(blob)
    name = DEVICE_TYPES.get(device_type, f"0x{device_type:x}")
    result = {"deviceType": name, "flags": flags, "length": len(blob)}
    if any(options):
        result["options"] = "{" + str(uuid.UUID(bytes_le=options)) + "}"
    if device_type in (PARTITION_DEVICE, LEGACY_PARTITION_DEVICE):
        return {**result, **_decode_partition(blob, size)}
    if device_type not in DEVICE_TYPES:
        return {**result, "kind": "unknown", "problem": f"device type {device_type} is not one ce knows"}
    if device_type == 0 and len(blob) >= 36:
        local = struct.unpack_from("<I", blob, 32)[0]
        result["localType"] = LOCAL_TYPES.get(local, f"0x{local:x}")
    return {**result, "kind": result["deviceType"]}


def _decode_partition(blob: bytes, size: int) -> dict:
    if len(blob) < PARTITION_DEVICE_SIZE or size < _DESCRIPTOR_SIZE or size > len(blob) - 16:
        return {"kind": "malformed", "problem": f"a partition device of {len(blob)} bytes (descriptor size {size}); "
                                                f"{PARTITION_DEVICE_SIZE} expected"}
    local_type, style = struct.unpack_from("<II", blob, 48)
    if local_type != 0:
        return {"kind": "unknown", "localType": LOCAL_TYPES.get(local_type, f"0x{local_type:x}"),
                "problem": "a partition on a non-local disk (e.g. inside a VHD), which ce does not decode"}
    if style == STYLE_GPT:
        return {"kind": "gpt_partition", "partitionGuid": str(uuid.UUID(bytes_le=blob[32:48])).upper(),
                "diskGuid": str(uuid.UUID(bytes_le=blob[56:72])).upper()}
    if style == STYLE_MBR:
        return {"kind": "mbr_partition", "offset": struct.unpack_from("<Q", blob, 32)[0],
                "diskSignature": struct.unpack_from("<I", blob, 56)[0]}
    return {"kind": "unknown", "problem": f"partition style {style} (0 GPT and 1 MBR are known)"}
