"""An MBR disk's partition table converted to GPT the way MBR2GPT does it, as pure functions on table data
(reference/uefi-differencing-diagnostics.md §5): ``check`` refuses what MBR2GPT refuses; ``plan_layout`` keeps every
partition's start and end, maps the types (0x27 → WinRE, everything else → basic data), and places the EFI system
partition -- the old system partition when MBR2GPT would reuse it, else a new one in space added at the end of the
disk (a differencing child may be larger than its parent). No partition is ever moved or shrunk.

Sizes: 100 MiB / 260 MiB (4Kn) and 1 GiB are taken as binary units (MBR2GPT's documentation says "MB").
"""
from __future__ import annotations

import uuid

from ..document import Document

from ce.errors import (
    AlreadyUefi, DynamicDisk, ExtendedPartitions, InvalidPartitionTable, NoRoomForGpt, NoSystemPartition,
    TooManyPartitions, UefiConversionRefused, UefiUnsupportedWindows, UnknownPartitionType,
)
from ce.guest import ESP_GUID
from ce.guest.partitions import PartitionEntry, PartitionTable

from .mounted_devices import mounted_devices_problems, mounted_devices_to_gpt

__all__ = ["GptLayout", "check", "check_windows", "esp_min_bytes", "gpt_reserved_sectors", "mounted_devices_problems",
           "mounted_devices_to_gpt", "plan_layout"]

MIB = 1 << 20
BASIC_DATA_GUID = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
WINRE_GUID = "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"
WINRE_ATTRIBUTES = 0x8000000000000001        # required by the platform + no drive letter
MBR_WINRE, MBR_LDM = 0x27, 0x42
MBR_EXTENDED = {0x05, 0x0F, 0x85}
# FAT12, FAT16 (<32M), FAT16, NTFS/exFAT, FAT32 (CHS, LBA), FAT16 (LBA), WinRE: the types MBR2GPT maps by itself.
KNOWN_MBR_TYPES = {0x01, 0x04, 0x06, 0x07, 0x0B, 0x0C, 0x0E, MBR_WINRE}
GPT_ENTRY_ARRAY = 128 * 128                  # 128 entries of 128 bytes
MAX_PRIMARY = 3
ESP_NAME, BASIC_NAME, WINRE_NAME = "EFI system partition", "Basic data partition", "Recovery"
MIN_WINDOWS_BUILD = 10240                    # Windows 10 1507, the oldest MBR2GPT converts (Server 2016 is 14393)


class GptLayout(Document):
    """The planned GPT: ``table`` keeps every old partition's number, start and end; ``attributes`` are GPT
    attribute bits by partition number (WinRE); the ESP is partition ``esp_number`` (reused = the old system
    partition, to be reformatted FAT32). ``grow_bytes``: how much the disk must grow first (0 if it need not)."""
    table: PartitionTable
    attributes: dict[int, int]
    sector_size: int
    esp_number: int
    esp_reused: bool
    windows_partition: int
    old_disk_sectors: int
    disk_sectors: int
    grow_bytes: int
    partition_guid_by_offset: dict[int, str]  # byte offset of each old partition → its new GPT partition GUID


def gpt_reserved_sectors(sector_size: int) -> tuple[int, int]:
    """(sectors before the first usable LBA, sectors after the last usable LBA): MBR + header + entries, and the
    backup entries + header (34 / 33 on 512-byte sectors, 6 / 5 on 4Kn)."""
    entries = GPT_ENTRY_ARRAY // sector_size
    return 2 + entries, 1 + entries


def esp_min_bytes(sector_size: int) -> int:
    return (260 if sector_size == 4096 else 100) * MIB


def check(table: PartitionTable, *, sector_size: int, disk_sectors: int, can_grow: bool = True,
          type_map: dict[int, str] | None = None) -> None:
    """Refuse (a ``ce.errors.uefi`` class) a disk MBR2GPT would refuse, or whose GPT cannot fit without moving a
    partition. ``type_map``: extra MBR type → GPT type GUID (MBR2GPT's /map)."""
    if table.label == "gpt":
        raise AlreadyUefi("the disk has a GPT partition table already: it is converted (nothing was written)")
    if sector_size not in (512, 4096):
        raise UefiConversionRefused(f"sector size {sector_size}: MBR2GPT handles 512-byte and 4Kn disks")
    types = {p.number: _mbr_type(p) for p in table.partitions}
    if MBR_LDM in types.values():
        raise DynamicDisk("the disk is dynamic (an LDM partition, type 0x42): MBR2GPT converts basic disks only")
    if any(t in MBR_EXTENDED for t in types.values()) or any(n > 4 for n in types):
        raise ExtendedPartitions("the disk has an extended partition with logical drives: MBR2GPT refuses it")
    if len(table.partitions) > MAX_PRIMARY:
        raise TooManyPartitions(f"the disk has {len(table.partitions)} primary partitions; MBR2GPT converts at most "
                                f"{MAX_PRIMARY} (the EFI system partition needs the fourth)")
    _check_extents(table.partitions, disk_sectors)
    unknown = [f"{n} (0x{t:02x})" for n, t in types.items() if t not in KNOWN_MBR_TYPES | set(type_map or {})]
    if unknown:
        raise UnknownPartitionType(f"partition(s) {', '.join(unknown)} have MBR types MBR2GPT does not map")
    active = [p for p in table.partitions if p.bootable]
    if len(active) != 1:
        raise NoSystemPartition(f"the MBR has {len(active)} active partitions; exactly one (the system partition, "
                                "which holds bootmgr) is needed")
    _check_room(table.partitions, sector_size, disk_sectors, can_grow)


def check_windows(*, arch: str, build: int, product_name: str = "Windows") -> None:
    """Refuse a Windows that cannot boot UEFI from this conversion: 32-bit (no x64 UEFI loader) or older than
    Windows 10 / Server 2016. (BitLocker and no Windows are refused by their own codes before this.)"""
    if arch != "x86_64":
        raise UefiUnsupportedWindows(f"{product_name} is {arch}: only 64-bit Windows boots from the x64 UEFI "
                                     "files convertToUefi installs; nothing was written")
    if build < MIN_WINDOWS_BUILD:
        raise UefiUnsupportedWindows(f"{product_name} (build {build}) is older than Windows 10 / Server 2016, the "
                                     "oldest MBR2GPT converts; nothing was written")


def plan_layout(table: PartitionTable, *, sector_size: int, disk_sectors: int, windows_partition: int,
                system_partition_reusable: bool = True, can_grow: bool = True,
                type_map: dict[int, str] | None = None, disk_guid: str | None = None,
                partition_guids: dict[int, str] | None = None) -> GptLayout:
    """The GPT for ``table`` (checked first). ``windows_partition``: the number of the Windows partition;
    ``system_partition_reusable``: the caller found nothing on the system partition that must be kept (e.g. no
    WinRE), so it may become the ESP. ``disk_guid`` / ``partition_guids`` (by number, the new ESP's too): fixed
    GUIDs instead of random ones."""
    check(table, sector_size=sector_size, disk_sectors=disk_sectors, can_grow=can_grow, type_map=type_map)
    numbers = [p.number for p in table.partitions]
    if windows_partition not in numbers:
        raise InvalidPartitionTable(f"partition {windows_partition} (Windows) is not in the table ({numbers})")
    guids = {n: g.upper() for n, g in (partition_guids or {}).items()}
    reused = _reusable_system_partition(table, sector_size, windows_partition, system_partition_reusable)
    grow = _grow_bytes(table, sector_size, disk_sectors, new_esp=reused is None)
    if grow and not can_grow:
        raise NoRoomForGpt(f"the EFI system partition ({esp_min_bytes(sector_size) // MIB} MiB) and the backup GPT "
                           f"need {grow // MIB} MiB more at the end of the disk, and the disk may not grow")
    entries, attributes = _converted_entries(table, reused, guids, type_map or {})
    esp_number = reused.number if reused else max(numbers) + 1
    if reused is None:
        start, end = _new_esp_extent(table, sector_size)
        entries.append(PartitionEntry(number=esp_number, start=start, end=end, type=ESP_GUID, name=ESP_NAME,
                                      guid=guids.get(esp_number) or _new_guid()))
    gpt = PartitionTable(label="gpt", partitions=entries, disk_guid=(disk_guid or _new_guid()).upper())
    return GptLayout(table=gpt, attributes=attributes, sector_size=sector_size, esp_number=esp_number,
                     esp_reused=reused is not None, windows_partition=windows_partition,
                     old_disk_sectors=disk_sectors, disk_sectors=disk_sectors + grow // sector_size, grow_bytes=grow,
                     partition_guid_by_offset={p.start * sector_size: p.guid for p in entries if p.number in numbers})


def _converted_entries(table: PartitionTable, esp: PartitionEntry | None, guids: dict[int, str],
                       type_map: dict[int, str]) -> tuple[list[PartitionEntry], dict[int, int]]:
    """The old partitions as GPT entries (same number, start and end) and the WinRE attribute bits."""
    entries, attributes = [], {}
    for old in sorted(table.partitions, key=lambda p: p.number):
        gpt_type, name = _gpt_type(old, esp, type_map)
        entries.append(PartitionEntry(number=old.number, start=old.start, end=old.end, type=gpt_type, name=name,
                                      guid=guids.get(old.number) or _new_guid()))
        if gpt_type == WINRE_GUID:
            attributes[old.number] = WINRE_ATTRIBUTES
    return entries, attributes


def _mbr_type(entry: PartitionEntry) -> int:
    try:
        return int(entry.type, 16)
    except ValueError:
        raise InvalidPartitionTable(f"partition {entry.number} has MBR type {entry.type!r}, not a hex byte") from None


def _check_extents(partitions: list[PartitionEntry], disk_sectors: int) -> None:
    previous_end = 0
    for p in sorted(partitions, key=lambda p: p.start):
        if p.start < 1 or p.end < p.start or p.end >= disk_sectors or p.start <= previous_end:
            raise InvalidPartitionTable(f"partition {p.number} (sectors {p.start}-{p.end}) overlaps another or lies "
                                        f"outside the {disk_sectors}-sector disk")
        previous_end = p.end


def _check_room(partitions: list[PartitionEntry], sector_size: int, disk_sectors: int, can_grow: bool) -> None:
    head, tail = gpt_reserved_sectors(sector_size)
    first = min(p.start for p in partitions)
    if first < head:
        raise NoRoomForGpt(f"the first partition starts at sector {first}; the GPT needs sectors 0-{head - 1} "
                           "(MBR2GPT's 16 KiB + 2 sectors at the front) and ce does not move partitions")
    last = max(p.end for p in partitions)
    if last > disk_sectors - 1 - tail and not can_grow:
        raise NoRoomForGpt(f"the last partition ends at sector {last}, inside the {tail} sectors the backup GPT "
                           "needs at the end of the disk, and the disk may not grow")


def _reusable_system_partition(table: PartitionTable, sector_size: int, windows_partition: int,
                               reusable: bool) -> PartitionEntry | None:
    """MBR2GPT's rule: the active partition becomes the ESP if it is neither the OS nor the WinRE partition and
    holds 100 MiB (260 MiB on 4Kn) to 1 GiB; it is reformatted FAT32."""
    system = next(p for p in table.partitions if p.bootable)
    size = (system.end - system.start + 1) * sector_size
    if (not reusable or system.number == windows_partition or _mbr_type(system) == MBR_WINRE
            or not esp_min_bytes(sector_size) <= size <= 1024 * MIB):
        return None
    return system


def _gpt_type(old: PartitionEntry, esp: PartitionEntry | None, type_map: dict[int, str]) -> tuple[str, str]:
    if esp is not None and old.number == esp.number:
        return ESP_GUID, ESP_NAME
    mbr = _mbr_type(old)
    if mbr in type_map:
        return type_map[mbr].upper(), BASIC_NAME
    return (WINRE_GUID, WINRE_NAME) if mbr == MBR_WINRE else (BASIC_DATA_GUID, BASIC_NAME)


def _new_esp_extent(table: PartitionTable, sector_size: int) -> tuple[int, int]:
    """A new ESP right after the last partition, 1 MiB-aligned."""
    align = MIB // sector_size
    start = -(-(max(p.end for p in table.partitions) + 1) // align) * align
    return start, start + esp_min_bytes(sector_size) // sector_size - 1


def _grow_bytes(table: PartitionTable, sector_size: int, disk_sectors: int, *, new_esp: bool) -> int:
    """Bytes the disk must grow so the new ESP (if any) and the backup GPT fit after the last partition; a whole
    number of MiB."""
    _, tail = gpt_reserved_sectors(sector_size)
    last = _new_esp_extent(table, sector_size)[1] if new_esp else max(p.end for p in table.partitions)
    missing = (last + 1 + tail - disk_sectors) * sector_size
    return 0 if missing <= 0 else -(-missing // MIB) * MIB


def _new_guid() -> str:
    return str(uuid.uuid4()).upper()
