"""The boot entries of a BCD store (BIOS ``\\Boot\\BCD`` or UEFI ``\\EFI\\Microsoft\\Boot\\BCD``), for inspect:
every application object (boot manager, OS loaders, resume, memory diagnostic) with its path and decoded devices.
The store comes from an image, so it is hostile input: values of the wrong type are reported, not trusted, and the
number of objects read is bounded."""
from __future__ import annotations

import os

from ...document import Document

from ce.errors import RegistryKeyMissing
from ce.registry import Hive, RegType

import ce.windows.bcd.elements as e
from .device import decode_device

MAX_OBJECTS = 1024
APPLICATION_CLASS = 1


class BootEntry(Document):
    guid: str
    alias: str | None = None                 # bootmgr, memdiag, ... for well-known objects
    type: int
    type_name: str                           # bootmgr | osloader | resume | memdiag | fwbootmgr | 0x........
    description: str | None = None
    path: str | None = None
    device: dict | None = None               # decode_device() of ApplicationDevice
    osdevice: dict | None = None             # OsDevice (the hibernation file's device for resume objects)
    systemroot: str | None = None            # SystemRoot (the hibernation file's path for resume objects)
    default: bool = False
    display_index: int | None = None         # position in {bootmgr}'s displayorder
    problems: list[str] = []


def read_boot_entries(hive_path: str | os.PathLike) -> list[BootEntry]:
    """The store's application objects: {bootmgr} first, then the display order, then the rest by GUID."""
    with Hive.open(hive_path, label=str(hive_path), allow_dirty=True) as hive:
        if not hive.key_exists("Objects"):
            raise RegistryKeyMissing(f"{hive_path} has no Objects key: it is not a BCD store")
        guids = hive.subkeys("Objects")[:MAX_OBJECTS]
        entries = [entry for guid in guids if (entry := _read_object(hive, guid)) is not None]
        default, order = _boot_manager_choices(hive)
    for entry in entries:
        entry.default = entry.guid.lower() == default
        entry.display_index = order.index(entry.guid.lower()) if entry.guid.lower() in order else None
    return sorted(entries, key=lambda x: (x.alias != "bootmgr", x.display_index is None, x.display_index or 0,
                                          x.guid.lower()))


def _read_object(hive: Hive, guid: str) -> BootEntry | None:
    object_type = hive.get(f"Objects\\{guid}\\Description", "Type")
    if object_type is None or object_type.type != RegType.DWORD or object_type.data >> 28 != APPLICATION_CLASS:
        return None
    entry = BootEntry(guid=guid, alias=e.ALIASES.get(guid.lower()), type=object_type.data,
                      type_name=e.APPLICATION_TYPES.get(object_type.data, f"0x{object_type.data:08x}"))
    entry.description = _string(hive, guid, e.DESCRIPTION, entry)
    entry.path = _string(hive, guid, e.APPLICATION_PATH, entry)
    entry.device = _device(hive, guid, e.APPLICATION_DEVICE, entry)
    if entry.type in (e.TYPE_OSLOADER, e.TYPE_RESUME):
        entry.osdevice = _device(hive, guid, e.OS_DEVICE, entry)
        entry.systemroot = _string(hive, guid, e.SYSTEM_ROOT, entry)
    return entry


def _element(hive: Hive, guid: str, element_id: int, want: RegType, entry: BootEntry | None):
    value = hive.get(e.element_key(guid, element_id), "Element")
    if value is None:
        return None
    if value.type != want:
        if entry is not None:
            found = getattr(value.type, "name", value.type)       # an unknown type code stays a number
            entry.problems.append(f"element {element_id:08X} is REG_{found}, not REG_{want.name}")
        return None
    return value.data


def _string(hive: Hive, guid: str, element_id: int, entry: BootEntry) -> str | None:
    return _element(hive, guid, element_id, RegType.SZ, entry)


def _device(hive: Hive, guid: str, element_id: int, entry: BootEntry) -> dict | None:
    blob = _element(hive, guid, element_id, RegType.BINARY, entry)
    return None if blob is None else decode_device(blob)


def _boot_manager_choices(hive: Hive) -> tuple[str | None, list[str]]:
    """{bootmgr}'s default object and display order, lowercased."""
    if not hive.key_exists(e.object_key(e.BOOTMGR)):
        return None, []
    default = _element(hive, e.BOOTMGR, e.DEFAULT_OBJECT, RegType.SZ, None)
    order = _element(hive, e.BOOTMGR, e.DISPLAY_ORDER, RegType.MULTI_SZ, None) or []
    return (default or "").lower() or None, [g.lower() for g in order[:MAX_OBJECTS]]
