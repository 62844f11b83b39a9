"""The boot part of inspect: the partition the firmware boots from (the EFI system partition, or BIOS's active MBR
partition), the BCD store on it and its boot entries, each device element resolved to a partition of this disk,
and warnings when the store would not boot the Windows inspect found.

The store comes from the image, so it is hostile input: its size is bounded before it is copied out, and a store
that cannot be read is a warning, never an error (inspect reports the rest of the disk all the same).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ce.changes import StepWarning
from ce.errors import BootConfigMismatch, BootConfigMissing, BootConfigUnreadable, CeError, RegistryKeyMissing
from ce.guest import ESP_GUID, Filesystem, Guest

from .bcd import BootEntry, read_boot_entries
from .facts import BootDevice, BootEntryFacts, BootFacts, BootPartition, BootStore

ESP_TYPES = (ESP_GUID, "0xef")                      # GPT type GUID; MBR id 0xEF (UEFI booting an MBR disk)
STORE_PATHS = {"uefi": "/EFI/Microsoft/Boot/BCD", "bios": "/Boot/BCD"}
MAX_STORE_BYTES = 16 << 20                          # real stores are tens of KiB
MAX_LISTED_PROBLEMS = 3


@dataclass(frozen=True)
class ThisDisk:
    """What a BCD device element is compared with: the partition table's style and identifier (GPT disk GUID, or
    the MBR signature as 8 hex digits) and the disk's partitions (their offsets and GPT GUIDs)."""
    table: str                                      # gpt | mbr | none
    disk_id: str
    partitions: tuple[Filesystem, ...]


def esp_of(filesystems: list[Filesystem]) -> Filesystem | None:
    return next((fs for fs in filesystems if fs.partition_type in ESP_TYPES), None)


def system_partition_of(filesystems: list[Filesystem]) -> Filesystem | None:
    """The active MBR partition: the one BIOS loads the boot sector (and bootmgr) from."""
    return next((fs for fs in filesystems if fs.active), None)


# ---------------------------------------------------------------- reading

def read_boot(guest: Guest, device: str, disk: ThisDisk, firmware: str, windows_device: str,
              tmp: Path) -> tuple[BootFacts, list[StepWarning]]:
    """The boot facts of ``device`` (whose Windows volume is mounted read-only) and the warnings they raise."""
    esp, system = esp_of(list(disk.partitions)), system_partition_of(list(disk.partitions))
    facts = BootFacts(esp=boot_partition(esp), system_partition=boot_partition(system))
    home = esp if firmware == "uefi" else system if firmware == "bios" else None
    if home is None:
        what = "active partition" if disk.table == "mbr" else "EFI system partition"
        return facts, [_missing(f"{device} has no {what}: no firmware can boot it as it is")]
    try:
        found = copy_store(guest, home.device, STORE_PATHS[firmware], tmp)
    except (CeError, RuntimeError) as exc:
        return facts, [_unreadable(f"the BCD store on {home.device} cannot be read: {_reason(exc)}")]
    if found is None:
        return facts, [_missing(f"no BCD store at {home.device}:{STORE_PATHS[firmware]}: the boot manager has no "
                                f"boot entries to start")]
    path, local = found
    facts.store = BootStore(device=home.device, path=path)
    return facts, read_entries(facts, local, disk, firmware, windows_device)


def read_entries(facts: BootFacts, local: Path, disk: ThisDisk, firmware: str,
                 windows_device: str) -> list[StepWarning]:
    """Fill ``facts`` (its ``store`` set) with the boot entries of the store's local copy; returns the warnings."""
    where = f"{facts.store.device}:{facts.store.path}"
    try:
        entries = read_boot_entries(local)
    except RegistryKeyMissing:
        return [_missing(f"the BCD store {where} has no boot entries (not even an Objects key): the boot manager "
                         f"has nothing to start")]
    except (CeError, RuntimeError, ValueError) as exc:
        reason = _reason(exc).replace(str(local), where)           # name the store in the image, not our copy
        return [_unreadable(f"the BCD store {reason}" if reason.startswith(where)
                            else f"the BCD store {where} cannot be read: {reason}")]
    facts.entries = [entry_facts(entry, disk, facts.store.device) for entry in entries]
    facts.default = next((entry.guid for entry in facts.entries if entry.default), None)
    facts.display_order = [e.guid for e in sorted((e for e in facts.entries if e.display_index is not None),
                                                  key=lambda e: e.display_index)]
    return store_warnings(facts, where, firmware, windows_device)


def copy_store(guest: Guest, filesystem: str, path: str, tmp: Path) -> tuple[str, Path] | None:
    """(the store's path with its on-disk case, a local copy) of ``path`` on ``filesystem``, or None if absent."""
    with guest.on_filesystem(filesystem):
        found = guest.win_path(path)
        if not guest.is_file(found):
            return None
        size = guest.file_size(found)
        if size > MAX_STORE_BYTES:
            raise BootConfigUnreadable(f"{filesystem}:{found} is {size} bytes, more than a BCD store "
                                       f"({MAX_STORE_BYTES} at most): not read")
        local = tmp / "BCD"
        guest.download(found, str(local))
    return found, local


def boot_partition(fs: Filesystem | None) -> BootPartition | None:
    return fs and BootPartition(device=fs.device, size=fs.size, filesystem=fs.type, label=fs.label)


def entry_facts(entry: BootEntry, disk: ThisDisk, boot_device: str) -> BootEntryFacts:
    def resolved(decoded):
        return None if decoded is None else resolve_device(decoded, disk, boot_device)
    return BootEntryFacts(guid=entry.guid, alias=entry.alias, type=entry.type_name, description=entry.description,
                          path=entry.path, device=resolved(entry.device), osdevice=resolved(entry.osdevice),
                          systemroot=entry.systemroot, default=entry.default, display_index=entry.display_index,
                          problems=entry.problems)


# ---------------------------------------------------------------- resolving devices

def resolve_device(decoded: dict, disk: ThisDisk, boot_device: str | None) -> BootDevice:
    """A decoded device element in words, and the partition of ``disk`` it names. ``boot_device`` is the partition
    the store was read from, which the "boot" device (where the boot manager was loaded from) stands for."""
    kind = decoded.get("kind")
    if kind == "gpt_partition":
        text = f"GPT partition {{{decoded['partitionGuid']}}} of disk {{{decoded['diskGuid']}}}"
        if disk.table != "gpt" or decoded["diskGuid"].upper() != disk.disk_id.upper():
            return BootDevice(text=text, on_this_disk=False, decoded=decoded)
        match = [fs for fs in disk.partitions if fs.partition_guid.upper() == decoded["partitionGuid"].upper()]
    elif kind == "mbr_partition":
        text = f"MBR partition at offset {decoded['offset']} of disk 0x{decoded['diskSignature']:08X}"
        if disk.table != "mbr" or decoded["diskSignature"] != _signature(disk.disk_id):
            return BootDevice(text=text, on_this_disk=False, decoded=decoded)
        match = [fs for fs in disk.partitions if fs.offset == decoded["offset"]]
    elif kind == "boot":
        return BootDevice(text="the boot device, the partition the boot manager was loaded from",
                          partition=boot_device, on_this_disk=True if boot_device else None, decoded=decoded)
    else:
        problem = decoded.get("problem")
        text = f"an undecodable device ({problem})" if problem else f"a {decoded.get('deviceType')} device"
        return BootDevice(text=text, decoded=decoded)
    return BootDevice(text=text, partition=match[0].device if match else None, on_this_disk=True, decoded=decoded)


def _signature(disk_id: str) -> int | None:
    try:
        return int(disk_id, 16)
    except ValueError:
        return None


# ---------------------------------------------------------------- warnings

def store_warnings(facts: BootFacts, where: str, firmware: str, windows_device: str) -> list[StepWarning]:
    """No entries, no default, a default that does not start the Windows inspect found (its device and osdevice
    are not ``windows_device``) or is the other firmware's loader, and elements of the wrong type."""
    if not facts.entries:
        return [_missing(f"the BCD store {where} has no boot entries: the boot manager has nothing to start")]
    warnings = []
    problems = [f"{e.guid}: {p}" for e in facts.entries for p in e.problems]
    if problems:
        warnings.append(_unreadable(f"the BCD store {where} has elements it cannot use: "
                                    + "; ".join(problems[:MAX_LISTED_PROBLEMS])
                                    + (f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)"
                                       if len(problems) > MAX_LISTED_PROBLEMS else "")))
    default = next((e for e in facts.entries if e.default), None)
    if default is None:
        return warnings + [_missing(f"the BCD store {where} names no default boot entry it holds")]
    name = f"the default boot entry {default.guid}" + (f" '{default.description}'" if default.description else "")
    elsewhere = [f"its {label} is {device.describe() if device else 'not set'}"
                 for label, device in (("device", default.device), ("osdevice", default.osdevice))
                 if device is None or device.partition != windows_device]
    if elsewhere:
        warnings.append(_mismatch(f"{where}: {name} does not start the Windows on {windows_device}: "
                                  + "; ".join(elsewhere)))
    loader = (default.path or "").lower()
    if loader.endswith(".efi") and firmware != "uefi":
        warnings.append(_mismatch(f"{where}: {name} loads {default.path} (a UEFI loader), but the disk boots by "
                                  f"BIOS (MBR, no EFI system partition)"))
    elif loader.endswith(".exe") and firmware == "uefi":
        warnings.append(_mismatch(f"{where}: {name} loads {default.path} (a BIOS loader), but the disk boots by "
                                  f"UEFI (an EFI system partition)"))
    return warnings


def _missing(message: str) -> StepWarning:
    return StepWarning(code=BootConfigMissing.code, message=message)


def _unreadable(message: str) -> StepWarning:
    return StepWarning(code=BootConfigUnreadable.code, message=message)


def _mismatch(message: str) -> StepWarning:
    return StepWarning(code=BootConfigMismatch.code, message=message)


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, CeError) else " ".join(str(exc).split())[:300]
