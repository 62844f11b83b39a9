"""Sample BCD stores for the Windows sample images: what an image's ``System32\\config\\BCD-Template`` holds and a
BIOS ``\\Boot\\BCD`` as bcdboot writes it on an MBR disk. Rows are ``(key, value name, RegType, data)``, the form
``images.build.make_hive`` takes; the hive's root key is ``ROOT_NAME``.

Object GUIDs, type DWORDs and element ids are the measured ones (reference/uefi-differencing-diagnostics.md §6).
Which settings a real BCD-Template carries beyond the objects and their inherit chains is not measured here
(no real template was on hand); the debugger/EMS/hypervisor defaults below are bcdedit's documented defaults.
"""
from __future__ import annotations

import uuid

from ce.registry import RegType
from ce.windows.bcd import encode_mbr_partition
from ce.windows.bcd import elements as e

ROOT_NAME = "NewStoreRoot"      # measured on a real store; assumed the same for BCD-Template (U)
LOCALE = "en-US"


def template_values() -> list[tuple[str, str, RegType, object]]:
    """The settings objects, {memdiag} and {bootmgr} without devices: bcdboot fills those in."""
    rows = [("Description", "KeyName", RegType.SZ, e.STORE_KEY_NAME)]
    rows += e.object_rows(e.GLOBALSETTINGS, e.TYPE_SETTINGS, {
        e.LOCALE: LOCALE, e.INHERIT: [e.DBGSETTINGS, e.EMSSETTINGS, e.BADMEMORY]})
    rows += e.object_rows(e.DBGSETTINGS, e.TYPE_SETTINGS, {
        e.DEBUGGER_TYPE: e.DEBUGGER_SERIAL, e.DEBUGGER_PORT: 1, e.DEBUGGER_BAUDRATE: 115200})
    rows += e.object_rows(e.EMSSETTINGS, e.TYPE_SETTINGS, {e.EMS_ENABLED: False})
    rows += e.object_rows(e.BADMEMORY, e.TYPE_SETTINGS, {})
    rows += e.object_rows(e.BOOTLOADERSETTINGS, e.TYPE_LOADER_SETTINGS, {
        e.INHERIT: [e.GLOBALSETTINGS, e.HYPERVISORSETTINGS]})
    rows += e.object_rows(e.HYPERVISORSETTINGS, e.TYPE_LOADER_SETTINGS, {
        e.HYPERVISOR_DEBUGGER_TYPE: e.DEBUGGER_SERIAL, e.HYPERVISOR_DEBUGGER_PORT: 1,
        e.HYPERVISOR_BAUDRATE: 115200})
    rows += e.object_rows(e.RESUMELOADERSETTINGS, e.TYPE_RESUME_SETTINGS, {e.INHERIT: [e.GLOBALSETTINGS]})
    rows += e.object_rows(e.MEMDIAG, e.TYPE_MEMDIAG, {
        e.DESCRIPTION: "Windows Memory Diagnostic", e.LOCALE: LOCALE, e.INHERIT: [e.GLOBALSETTINGS],
        e.BAD_MEMORY_ACCESS: True})
    rows += e.object_rows(e.BOOTMGR, e.TYPE_BOOTMGR, {
        e.DESCRIPTION: "Windows Boot Manager", e.LOCALE: LOCALE, e.INHERIT: [e.GLOBALSETTINGS], e.TIMEOUT: 30})
    return rows


def bios_store_values(disk_signature: int, windows_offset: int, boot_offset: int, *, loader_guid: str,
                      description: str = "Windows 10") -> list[tuple[str, str, RegType, object]]:
    """A system store on the active (boot) partition of an MBR disk: {bootmgr} on the boot partition, one OS loader
    and its resume object on the Windows partition (devices by byte offset + disk signature), {memdiag}."""
    loader = e.braced(loader_guid)
    resume = "{" + str(uuid.uuid5(uuid.UUID(loader[1:-1]), "resume")) + "}"
    boot = encode_mbr_partition(boot_offset, disk_signature)
    windows = encode_mbr_partition(windows_offset, disk_signature)
    rows = [row for row in template_values() if not row[0].startswith((e.object_key(e.BOOTMGR),
                                                                         e.object_key(e.MEMDIAG)))]
    rows += [("Description", "System", RegType.DWORD, 1), ("Description", "TreatAsSystem", RegType.DWORD, 1)]
    rows += e.object_rows(e.BOOTMGR, e.TYPE_BOOTMGR, {
        e.APPLICATION_DEVICE: boot, e.DESCRIPTION: "Windows Boot Manager", e.LOCALE: LOCALE,
        e.INHERIT: [e.GLOBALSETTINGS], e.DEFAULT_OBJECT: loader, e.RESUME_OBJECT_BOOTMGR: resume,
        e.DISPLAY_ORDER: [loader], e.TOOLS_DISPLAY_ORDER: [e.MEMDIAG], e.TIMEOUT: 30})
    rows += e.object_rows(loader, e.TYPE_OSLOADER, {
        e.APPLICATION_DEVICE: windows, e.APPLICATION_PATH: "\\Windows\\system32\\winload.exe",
        e.DESCRIPTION: description, e.LOCALE: LOCALE, e.INHERIT: [e.BOOTLOADERSETTINGS], e.OS_DEVICE: windows,
        e.SYSTEM_ROOT: "\\Windows", e.RESUME_OBJECT: resume, e.NX_POLICY: e.NX_OPT_IN,
        e.BOOT_MENU_POLICY: e.BOOT_MENU_STANDARD})
    rows += e.object_rows(resume, e.TYPE_RESUME, {
        e.APPLICATION_DEVICE: windows, e.APPLICATION_PATH: "\\Windows\\system32\\winresume.exe",
        e.DESCRIPTION: "Windows Resume Application", e.LOCALE: LOCALE, e.INHERIT: [e.RESUMELOADERSETTINGS],
        e.OS_DEVICE: windows, e.SYSTEM_ROOT: "\\hiberfil.sys"})
    rows += e.object_rows(e.MEMDIAG, e.TYPE_MEMDIAG, {
        e.APPLICATION_DEVICE: boot, e.APPLICATION_PATH: "\\boot\\memtest.exe",
        e.DESCRIPTION: "Windows Memory Diagnostic", e.LOCALE: LOCALE, e.INHERIT: [e.GLOBALSETTINGS],
        e.BAD_MEMORY_ACCESS: True})
    return rows
