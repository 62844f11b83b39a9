"""The UEFI system store bcdboot writes, built offline with hivex from the image's own ``BCD-Template``:
{bootmgr} on the EFI system partition, one Windows Boot Loader and its resume object on the Windows partition (GPT
partition devices), {memdiag} on the ESP, default and display order. The template is read, never written; a dirty,
damaged or incomplete template is refused before anything is written (``bcd_template_unusable``)."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from pydantic import BaseModel

from ce.errors import BcdTemplateUnusable, RegistryError
from ce.registry import Hive, RegType, verify_changes

import ce.windows.bcd.elements as e
from .device import encode_gpt_partition

BOOTMGR_PATH = "\\EFI\\Microsoft\\Boot\\bootmgfw.efi"
MEMTEST_PATH = "\\EFI\\Microsoft\\Boot\\memtest.efi"
WINLOAD_PATH = "\\Windows\\system32\\winload.efi"
WINRESUME_PATH = "\\Windows\\system32\\winresume.efi"
REQUIRED_OBJECTS = (e.GLOBALSETTINGS, e.BOOTLOADERSETTINGS, e.RESUMELOADERSETTINGS)
_REPLACED_TYPES = (e.TYPE_OSLOADER, e.TYPE_RESUME)


class UefiStoreSummary(BaseModel):
    """What ``build_uefi_store`` wrote: the objects it set, the loader and resume GUIDs, objects it removed."""
    path: str
    loader_guid: str
    resume_guid: str
    objects: list[str]                  # every object GUID whose elements were set
    values_set: int
    removed_objects: list[str] = []     # OS loader / resume objects the template had (not ours)


def build_uefi_store(template: Path, out: Path, *, esp_partition_guid: str, windows_partition_guid: str,
                     disk_guid: str, locale: str = "en-US", loader_guid: str | None = None,
                     description: str = "Windows 10") -> UefiStoreSummary:
    """Write ``out`` (atomically: ``out.partial`` then renamed) from ``template``; ``description`` is the loader's
    menu entry ("Windows 10", "Windows Server", ...). GUIDs are the GPT's (partition unique GUIDs, disk GUID)."""
    template, out = Path(template), Path(out)
    loader = e.braced(loader_guid or str(uuid.uuid4()))
    resume = "{" + str(uuid.uuid5(uuid.UUID(loader[1:-1]), "resume")) + "}"
    esp = encode_gpt_partition(esp_partition_guid, disk_guid)
    windows = encode_gpt_partition(windows_partition_guid, disk_guid)
    rows = store_rows(esp, windows, loader=loader, resume=resume, locale=locale, description=description)
    partial = out.with_name(out.name + ".partial")
    _check_template(template)
    shutil.copyfile(template, partial)
    try:
        with Hive.open(partial, write=True, label=f"{out.name} (from {template.name})") as hive:
            removed = _remove_foreign_applications(hive, keep=(loader, resume))
            for key, name, rtype, data in rows:
                hive.set(key, name, rtype, data)
            hive.commit(partial)
            changes = hive.changes
        _verify(partial, changes, out.name)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return UefiStoreSummary(path=str(out), loader_guid=loader, resume_guid=resume, removed_objects=removed,
                            objects=[e.BOOTMGR, loader, resume, e.MEMDIAG], values_set=len(rows))


def store_rows(esp: bytes, windows: bytes, *, loader: str, resume: str, locale: str,
               description: str) -> list[tuple[str, str, RegType, object]]:
    """Every value the UEFI store gets, as ``(key, name, type, data)`` rows (also what a dry run lists)."""
    rows = [("Description", "KeyName", RegType.SZ, e.STORE_KEY_NAME),
            ("Description", "System", RegType.DWORD, 1), ("Description", "TreatAsSystem", RegType.DWORD, 1)]
    rows += e.object_rows(e.BOOTMGR, e.TYPE_BOOTMGR, {
        e.APPLICATION_DEVICE: esp, e.APPLICATION_PATH: BOOTMGR_PATH, e.DESCRIPTION: "Windows Boot Manager",
        e.LOCALE: locale, e.INHERIT: [e.GLOBALSETTINGS], e.DEFAULT_OBJECT: loader, e.RESUME_OBJECT_BOOTMGR: resume,
        e.DISPLAY_ORDER: [loader], e.TOOLS_DISPLAY_ORDER: [e.MEMDIAG], e.TIMEOUT: 30})
    rows += e.object_rows(loader, e.TYPE_OSLOADER, {
        e.APPLICATION_DEVICE: windows, e.APPLICATION_PATH: WINLOAD_PATH, e.DESCRIPTION: description,
        e.LOCALE: locale, e.INHERIT: [e.BOOTLOADERSETTINGS], e.OS_DEVICE: windows, e.SYSTEM_ROOT: "\\Windows",
        e.RESUME_OBJECT: resume, e.NX_POLICY: e.NX_OPT_IN, e.BOOT_MENU_POLICY: e.BOOT_MENU_STANDARD})
    rows += e.object_rows(resume, e.TYPE_RESUME, {
        e.APPLICATION_DEVICE: windows, e.APPLICATION_PATH: WINRESUME_PATH,
        e.DESCRIPTION: "Windows Resume Application", e.LOCALE: locale, e.INHERIT: [e.RESUMELOADERSETTINGS],
        e.OS_DEVICE: windows, e.SYSTEM_ROOT: "\\hiberfil.sys"})
    rows += e.object_rows(e.MEMDIAG, e.TYPE_MEMDIAG, {
        e.APPLICATION_DEVICE: esp, e.APPLICATION_PATH: MEMTEST_PATH, e.DESCRIPTION: "Windows Memory Diagnostic",
        e.LOCALE: locale, e.INHERIT: [e.GLOBALSETTINGS]})
    return rows


def _check_template(template: Path) -> None:
    if not template.is_file():
        raise BcdTemplateUnusable(f"{template} does not exist; nothing was written")
    try:
        with Hive.open(template, label=str(template)) as hive:
            hive.check_structure()
            missing = [e.ALIASES[g] for g in REQUIRED_OBJECTS if not hive.key_exists(e.object_key(g))]
    except RegistryError as exc:
        raise BcdTemplateUnusable(f"{template} cannot be used: {exc.message} (nothing was written)") from None
    if missing:
        raise BcdTemplateUnusable(f"{template} is not a BCD template: it lacks the {', '.join(missing)} "
                                  "object(s) the boot entries inherit from; nothing was written")


def _remove_foreign_applications(hive: Hive, keep: tuple[str, ...]) -> list[str]:
    """OS loaders and resume objects already in the template would point at the old (MBR) partitions."""
    removed = []
    for guid in hive.subkeys("Objects"):
        if guid.lower() in keep:
            continue
        if hive.get_data(f"Objects\\{guid}\\Description", "Type") in _REPLACED_TYPES:
            hive.delete_key(f"Objects\\{guid}")
            removed.append(guid)
    return removed


def _verify(path: Path, changes, name: str) -> None:
    with Hive.open(path, label=name) as hive:
        problems = verify_changes(hive, changes)
    if problems:
        raise RegistryError(f"{name} read back differently than written: {'; '.join(problems[:3])}")
