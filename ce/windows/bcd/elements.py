"""The names inside a BCD store: well-known object GUIDs, object type DWORDs, element ids, and how an element's
data is stored (by the format nibble of its id). Facts: ../shared/reference/uefi-differencing-diagnostics.md §6.

A store is a regf hive: ``Description`` {KeyName, System, TreatAsSystem} and ``Objects\\{guid}\\Description\\Type``
+ ``Objects\\{guid}\\Elements\\<id as 8 hex digits>\\Element``.
"""
from __future__ import annotations

import re
import struct

from ce.registry import RegType

STORE_KEY_NAME = "BCD00000000"

# Well-known objects (bcdedit's aliases).
BOOTMGR = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}"
MEMDIAG = "{b2721d73-1db4-4c62-bf78-c548a880142d}"
GLOBALSETTINGS = "{7ea2e1ac-2e61-4728-aaa3-896d9d0a9f0e}"
DBGSETTINGS = "{4636856e-540f-4170-a130-a84776f4c654}"
EMSSETTINGS = "{0ce4991b-e6b3-4b16-b23c-5e0d9250e5d9}"
BADMEMORY = "{5189b25c-5558-4bf2-bca4-289b11bd29e2}"
BOOTLOADERSETTINGS = "{6efb52bf-1766-41db-a6b3-0ee5eff72bd7}"
HYPERVISORSETTINGS = "{7ff607e0-4395-11db-b0de-0800200c9a66}"
RESUMELOADERSETTINGS = "{1afa9c49-16ab-4a5c-901b-212802da9460}"
ALIASES = {BOOTMGR: "bootmgr", MEMDIAG: "memdiag", GLOBALSETTINGS: "globalsettings", DBGSETTINGS: "dbgsettings",
           EMSSETTINGS: "emssettings", BADMEMORY: "badmemory", BOOTLOADERSETTINGS: "bootloadersettings",
           HYPERVISORSETTINGS: "hypervisorsettings", RESUMELOADERSETTINGS: "resumeloadersettings"}

# Object types (Description\Type).
TYPE_BOOTMGR, TYPE_OSLOADER, TYPE_RESUME, TYPE_MEMDIAG = 0x10100002, 0x10200003, 0x10200004, 0x10200005
TYPE_FWBOOTMGR = 0x10100001
TYPE_SETTINGS, TYPE_LOADER_SETTINGS, TYPE_RESUME_SETTINGS = 0x20100000, 0x20200003, 0x20200004
APPLICATION_TYPES = {TYPE_FWBOOTMGR: "fwbootmgr", TYPE_BOOTMGR: "bootmgr", TYPE_OSLOADER: "osloader",
                     TYPE_RESUME: "resume", TYPE_MEMDIAG: "memdiag"}

# Library elements (any application).
APPLICATION_DEVICE = 0x11000001
APPLICATION_PATH = 0x12000002
DESCRIPTION = 0x12000004
LOCALE = 0x12000005
INHERIT = 0x14000006
RECOVERY_SEQUENCE = 0x14000008
RECOVERY_ENABLED = 0x16000009
BAD_MEMORY_ACCESS = 0x1600000B
DEBUGGER_TYPE = 0x15000011
DEBUGGER_PORT = 0x15000012
DEBUGGER_BAUDRATE = 0x15000013
EMS_ENABLED = 0x16000020
# Boot manager elements.
DISPLAY_ORDER = 0x24000001
DEFAULT_OBJECT = 0x23000003
RESUME_OBJECT_BOOTMGR = 0x23000006
TIMEOUT = 0x25000004
TOOLS_DISPLAY_ORDER = 0x24000010
# OS loader elements (resume: 21000001 is the hibernation file's device, 22000002 its path).
OS_DEVICE = 0x21000001
SYSTEM_ROOT = 0x22000002
RESUME_OBJECT = 0x23000003
NX_POLICY = 0x25000020
BOOT_MENU_POLICY = 0x250000C2
HYPERVISOR_DEBUGGER_TYPE = 0x250000F3
HYPERVISOR_DEBUGGER_PORT = 0x250000F4
HYPERVISOR_BAUDRATE = 0x250000F5

NX_OPT_IN, BOOT_MENU_STANDARD, DEBUGGER_SERIAL = 0, 1, 0

_FORMAT_TYPES = {1: RegType.BINARY, 2: RegType.SZ, 3: RegType.SZ, 4: RegType.MULTI_SZ, 5: RegType.BINARY,
                 6: RegType.BINARY, 7: RegType.BINARY}
_GUID = re.compile(r"^\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}$")


def element_format(element_id: int) -> int:
    """1 device, 2 string, 3 object, 4 object list, 5 integer, 6 boolean, 7 integer list."""
    return (element_id >> 24) & 0xF


def object_key(guid: str) -> str:
    return f"Objects\\{guid}"


def element_key(guid: str, element_id: int) -> str:
    return f"Objects\\{guid}\\Elements\\{element_id:08X}"


def braced(guid: str) -> str:
    """``{lowercase-guid}``, the spelling of object keys and object references in a store."""
    text = guid.strip().lower()
    text = text if text.startswith("{") else "{" + text + "}"
    if not _GUID.match(text):
        raise ValueError(f"not a GUID: {guid!r}")
    return text


def encode_element(element_id: int, data: object) -> tuple[RegType, object]:
    """(registry type, data for ce.registry) of one element: integers become 8-byte LE binaries, booleans one byte,
    object references ``{guid}`` strings, object lists REG_MULTI_SZ, devices the raw blob."""
    fmt = element_format(element_id)
    if fmt not in _FORMAT_TYPES:
        raise ValueError(f"element {element_id:08X} has format {fmt}, which BCD does not define")
    if fmt == 5:
        return RegType.BINARY, struct.pack("<Q", data)
    if fmt == 6:
        return RegType.BINARY, b"\x01" if data else b"\x00"
    if fmt == 7:
        return RegType.BINARY, b"".join(struct.pack("<Q", n) for n in data)
    if fmt == 3:
        return RegType.SZ, braced(data)
    if fmt == 4:
        return RegType.MULTI_SZ, [braced(g) for g in data]
    return _FORMAT_TYPES[fmt], data


def element_values(guid: str, element_id: int, data: object) -> tuple[str, str, RegType, object]:
    """One ``(key, value name, type, data)`` row, the form ``Hive.set`` and the image builder take."""
    rtype, stored = encode_element(element_id, data)
    return element_key(guid, element_id), "Element", rtype, stored


def object_rows(guid: str, object_type: int, elements: dict[int, object]) -> list[tuple[str, str, RegType, object]]:
    """All rows of one object: its Description\\Type and each element."""
    guid = braced(guid)
    rows = [(f"{object_key(guid)}\\Description", "Type", RegType.DWORD, object_type)]
    rows += [element_values(guid, element_id, data) for element_id, data in elements.items()]
    return rows
