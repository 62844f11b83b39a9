r"""convertToUefi: a BIOS/MBR PVS vDisk on a share -> a differencing child beside it that boots by UEFI from GPT.

Offline, the way MBR2GPT converts a disk (ce.windows.mbr2gpt), in one launch on a local overlay of the vDisk
(ce.childsession; the vDisk itself is never written):

1. refuse, with nothing written, what MBR2GPT refuses (already GPT, more than three primary partitions, logical or
   dynamic disks, no active system partition, unknown types) and Windows it does not convert offline (32-bit, older
   than Windows 10 / Server 2016); BitLocker, hibernated or dirty volumes are refused by the session;
2. the MBR becomes a GPT in place: every partition keeps its start and end, 0x27 becomes WinRE, the rest basic data;
3. the EFI system partition: the old system partition when MBR2GPT would reuse it (100 MiB - 1 GiB, neither the
   Windows nor a WinRE partition), reformatted FAT32; otherwise a new 100 MiB (260 MiB on 4Kn) FAT32 partition
   after the last one, in space the child adds (a VHDX child grows; a VHD child cannot, so such a VHD is refused);
4. the ESP gets what bcdboot puts there: ``\EFI\Microsoft\Boot\`` from the image's own ``Windows\Boot\EFI`` (and
   ``Windows\Boot\Fonts``), ``\EFI\Boot\bootx64.efi``, and a BCD built from the image's ``BCD-Template``
   (ce.windows.bcd) whose boot manager and Windows loader name the GPT's partitions;
5. ``SYSTEM\MountedDevices``: the drive letters' MBR form (disk signature + offset) becomes the GPT form
   (``DMIO:ID:`` + partition GUID), as MBR2GPT does, so C: stays C:.

The child is then written beside the vDisk. Nothing here boots Windows: the result is checked structurally (GPT,
FAT32, files, BCD decoded, MountedDevices), not by booting it.
"""
from __future__ import annotations

import re
from typing import Any
from pathlib import Path

from ce import windows
from ce.changes import Plan, Result
from ce.document import Facts as FactsBase
from ce.childsession import ChildStepFacts, ChildParams, apply_child_session, child_write, open_child_session, validate_names
from ce.cli.smbargs import FORMAT_NAMES, location_flags, split_file, storage
from ce.errors import UefiUnsupportedWindows
from ce.guest import partition_parent, partitions
from ce.registry import RegType
from ce.sharechild import MergedReader
from ce.step import CliSpec, StepContext, StepType
from ce.windows import mbr2gpt
from ce.windows.bcd import build_uefi_store, read_boot_entries
from ce.windows.mounted_devices import mounted_devices_to_gpt

NAME = "convertToUefi"
ESP_LABEL = "SYSTEM"
EFI_BOOT = "\\EFI\\Microsoft\\Boot"
WORST_GROWTH = mbr2gpt.esp_min_bytes(4096) + (2 << 20)      # a 4Kn ESP, the backup GPT and alignment


class Params(ChildParams):
    pass


def validate(params: Params) -> None:
    validate_names(params)


def plan(params: Params, ctx: StepContext) -> Plan:
    """One launch on an overlay large enough for any layout (kept open for apply); the GPT describes the child's
    real size, decided here."""
    session = open_child_session(params, ctx, name=NAME, extra_bytes=WORST_GROWTH, before_launch=check_mbr)
    ctx.session = session
    planned = windows.plan_session(session.windows, lambda planner, facts: plan_conversion(planner, facts, session),
                                   ctx)
    planned.changes.append(child_write(session, planned.facts["uefi"]["diskBytes"]))
    return planned


def check_mbr(parent, overlay) -> None:
    """MBR2GPT's disk checks from the first sector, before the appliance starts: a GPT disk, too many or logical
    partitions, no room where the child may not grow are refused in a second, not after a launch."""
    sector = parent.facts.logical_sector
    with MergedReader(overlay) as merged:
        table = partitions.table_from_mbr(merged.read_at(0, sector))
    mbr2gpt.check(table, sector_size=sector, disk_sectors=parent.facts.virtual_size // sector,
                  can_grow=parent.facts.format == "vhdx")


def plan_conversion(planner, facts, session) -> None:
    mbr2gpt.check_windows(arch=facts.os.arch, build=facts.os.build, product_name=facts.os.product_name)
    guest, sector = session.windows.guest, session.sector_size
    device = partition_parent(facts.os.root_device)
    table = partitions.read_table(guest, device)
    windows_number = int(re.search(r"(\d+)$", facts.os.root_device).group(1))
    reusable = system_partition_reusable(guest, table, windows_number, device)
    layout = mbr2gpt.plan_layout(table, sector_size=sector, disk_sectors=session.parent.facts.virtual_size // sector,
                                 windows_partition=windows_number, system_partition_reusable=reusable,
                                 can_grow=session.can_grow)
    planner.convert_to_gpt(device, layout.table, attributes=layout.attributes, sector_size=sector,
                           disk_sectors=layout.disk_sectors, reason="UEFI firmware boots from a GPT disk")
    esp = f"{device}{layout.esp_number}"
    planner.create_filesystem(esp, ESP_LABEL, old=describe_filesystem(guest, esp) if layout.esp_reused else None,
                              reason="the EFI system partition (FAT32) the firmware loads the boot manager from")
    plan_boot_files(planner, guest, esp)
    entries = plan_bcd(planner, guest, facts, layout, esp)
    letters = plan_mounted_devices(planner, guest, device, layout)
    planner.plan.facts["uefi"] = {
        "diskBytes": layout.disk_sectors * sector, "grownBytes": layout.grow_bytes, "sectorSize": sector,
        "esp": {"device": esp, "number": layout.esp_number, "reused": layout.esp_reused,
                "bytes": next((p.end - p.start + 1) * sector for p in layout.table.partitions
                              if p.number == layout.esp_number)},
        "partitions": [p.model_dump() for p in layout.table.partitions], "diskGuid": layout.table.disk_guid,
        "bootEntries": [e.model_dump(exclude_none=True) for e in entries], "driveLetters": letters}


def system_partition_reusable(guest, table, windows_number: int, device: str) -> bool:
    """MBR2GPT does not reuse a system partition that holds WinRE (or Windows itself)."""
    system = next((p for p in table.partitions if p.bootable), None)
    if system is None or system.number == windows_number:
        return False
    with guest.on_filesystem(f"{device}{system.number}"):
        return not (guest.exists("/Recovery/WindowsRE") or guest.exists("/Windows/System32"))


def describe_filesystem(guest, device: str) -> str:
    g = guest.g
    label = g.vfs_label(device) if g.vfs_type(device) else ""
    return f"{g.vfs_type(device) or 'no filesystem'}" + (f" {label!r}" if label else "")


def plan_boot_files(planner, guest, esp: str) -> None:
    """What bcdboot copies: the image's UEFI boot files and fonts, and bootmgfw.efi as the firmware's fallback."""
    source = guest.win_path("/Windows/Boot/EFI")
    if not guest.is_file(source + "/bootmgfw.efi"):
        raise UefiUnsupportedWindows("the image has no Windows\\Boot\\EFI\\bootmgfw.efi: its Windows cannot boot "
                                     "by UEFI (a 32-bit or stripped installation)")
    for folder, target in ((source, EFI_BOOT), (guest.win_path("/Windows/Boot/Fonts"), EFI_BOOT + "\\Fonts")):
        if not guest.is_dir(folder):
            continue
        for name in sorted(n.lstrip("/") for n in guest.g.find(folder)):
            if guest.is_file(f"{folder}/{name}"):
                local = download(guest, f"{folder}/{name}", planner.workdir)
                planner.write_file(f"{target}\\{name.replace('/', chr(92))}", local, filesystem=esp,
                                   reason="UEFI boot files (bcdboot's copy of Windows\\Boot)")
    planner.write_file("\\EFI\\Boot\\bootx64.efi", download(guest, source + "/bootmgfw.efi", planner.workdir),
                       filesystem=esp, reason="the firmware's fallback boot path: a new VM's NVRAM names no loader")


def plan_bcd(planner, guest, facts, layout, esp: str) -> list:
    """The UEFI BCD, built from the image's BCD-Template with the GPT's GUIDs; returns its boot entries."""
    template = download(guest, guest.win_path(f"{facts.os.systemroot}/System32/config/BCD-Template"),
                        planner.workdir)
    guids = {p.number: p.guid for p in layout.table.partitions}
    store = planner.workdir / "BCD"
    build_uefi_store(template, store, esp_partition_guid=guids[layout.esp_number],
                     windows_partition_guid=guids[layout.windows_partition], disk_guid=layout.table.disk_guid,
                     description="Windows Server" if facts.os.installation_type == "Server" else "Windows 10")
    planner.write_file(EFI_BOOT + "\\BCD", store, filesystem=esp,
                       reason="the boot configuration: boot manager on the ESP, Windows loader on the Windows partition")
    return read_boot_entries(store)


def plan_mounted_devices(planner, guest, device: str, layout) -> dict[str, str]:
    """Each drive letter / volume of this disk in MountedDevices, rewritten in its GPT form."""
    signature = int.from_bytes(guest.g.pread_device(device, 4, 440), "little")
    values = {name: value.data for name, value in planner.hive("SYSTEM").values("MountedDevices").items()
              if isinstance(value.data, bytes)}
    changed = mounted_devices_to_gpt(values, signature, layout.partition_guid_by_offset)
    for name, (_, new) in sorted(changed.items()):
        planner.set("SYSTEM", "MountedDevices", name, RegType.BINARY, new,
                    reason="MBR2GPT's drive-letter rewrite: the volume is now found by its GPT partition GUID")
    return {name: new[8:].hex() for name, (_, new) in sorted(changed.items())}


def download(guest, path: str, workdir: Path) -> Path:
    local = workdir / f"boot-{len(list(workdir.iterdir()))}-{Path(path).name}"
    guest.download(path, str(local))
    return local


def apply(params: Params, planned: Plan, ctx: StepContext) -> Result:
    return apply_child_session(ctx.session, planned, ctx, virtual_size=planned.facts["uefi"]["diskBytes"])


def describe(document: Plan | Result) -> list[str]:
    uefi = document.facts.get("uefi")
    if not uefi:
        return []
    esp = uefi["esp"]
    lines = [f"GPT disk of {uefi['diskBytes'] >> 20} MiB (grown by {uefi['grownBytes'] >> 20} MiB); EFI system "
             f"partition {esp['device']} ({esp['bytes'] >> 20} MiB, {'the old system partition' if esp['reused'] else 'new'})"]
    lines += [f"boot entry: {e.get('description') or e['typeName']} -> {e.get('path', '')}" for e in
              uefi["bootEntries"] if e["typeName"] in ("bootmgr", "osloader")]
    child = document.facts.get("child")
    if child:
        lines.append(f"child {child['name']}: {child['fileSize']} bytes ({child['dataBytes']} bytes of disk data), "
                     f"blocks {child['blocks']}")
    return lines


# ---------------------------------------------------------------- command line

def arguments(p) -> None:
    p.add_argument("image", help=r"the vDisk on its share: \\host\share\store\disk.vhdx")
    p.add_argument("--output", required=True, help="the child's file name, beside the vDisk (outputImageFilename)")
    p.add_argument("--source-format", choices=tuple(FORMAT_NAMES), type=str.lower,
                   help="the vDisk's format (default: from its extension)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (overwriteOutput)")


def cli_params(args) -> dict:
    folder, name = split_file(args.image)
    return {"inputStorageLocation": storage(args, folder), "inputImageFilename": name,
            "inputImageFormat": FORMAT_NAMES.get(args.source_format), "outputImageFilename": args.output,
            "overwriteOutput": args.overwrite}


class EspFacts(FactsBase):
    device: str
    number: int
    reused: bool                           # the old system partition, reformatted FAT32
    bytes: int


class UefiFacts(FactsBase):
    diskBytes: int                         # the child's virtual size
    grownBytes: int
    sectorSize: int
    esp: EspFacts
    partitions: list[dict[str, Any]]       # the GPT's entries: number, start, end, type, guid, name
    diskGuid: str | None = None
    bootEntries: list[dict[str, Any]]      # the BCD's entries as written
    driveLetters: dict[str, Any]           # MountedDevices as rewritten


class Facts(ChildStepFacts):
    uefi: UefiFacts


STEP = StepType(name=NAME, Facts=Facts, summary="convert a BIOS/MBR vDisk on a share to UEFI/GPT as a differencing child beside it",
                Params=Params, plan=plan, apply=apply, error_groups=("disk", "guest", "registry", "smb", "uefi",
                                                                     "step"),
                validate=validate, describe=describe,
                cli=CliSpec("convert-to-uefi", "convert a BIOS/MBR vDisk on a share to UEFI/GPT (a differencing "
                            "child beside it)", arguments, cli_params,
                            flags={"inputImageFilename": "IMAGE", "inputImageFormat": "--source-format",
                                   "outputImageFilename": "--output", "overwriteOutput": "--overwrite",
                                   **location_flags("inputStorageLocation", "IMAGE")}))
