"""Change kinds of the guest steps: registry values and keys, and files, on the mounted Windows image.

Each kind owns how it is described to people, how the applier checks that the image still holds what the plan saw,
and how it is performed (on a writable hive, or on the guest's files). ``ce.plan`` collects them into plans and
applies them (files first, then one verified commit per hive); first-boot actions are ``ce.firstboot``'s kind.
"""
from __future__ import annotations

import posixpath
from typing import Any, Literal

from pydantic import Field
from ..document import Document

from ..errors import FileWriteFailed, ImageChangedSincePlan, RegistryTypeUnknown
from ..guest import fat, gpt, partitions
from ..guest.partitions import PartitionTable
from ..registry import Hive, RegType, RegValue

STAGED_SUFFIX = ".ce-new"


# ---------------------------------------------------------------- registry values

TYPED_IN_JSON = {RegType.SZ, RegType.EXPAND_SZ, RegType.LINK, RegType.MULTI_SZ, RegType.DWORD, RegType.DWORD_BE,
                 RegType.QWORD}


def type_from_name(name: str) -> RegType:
    try:
        return RegType.DWORD_BE if name == "REG_DWORD_BIG_ENDIAN" else RegType[name.removeprefix("REG_")]
    except KeyError:
        raise RegistryTypeUnknown(f"unknown registry type {name!r}") from None


def data_from_json(rtype: RegType, value: Any) -> Any:
    """Inverse of RegValue.to_json()'s "value": binary-like types travel as hex."""
    return value if rtype in TYPED_IN_JSON else bytes.fromhex(value)


def json_of(value: RegValue | None) -> dict | None:
    return None if value is None else value.to_json()


def shown(value) -> str:
    """A registry value as regedit shows it: a string in quotes with its backslashes as they are (repr would
    double them: C:\\Windows), a list of strings likewise, anything else as Python prints it."""
    if isinstance(value, str) and "'" not in value:
        return f"'{value}'"
    if isinstance(value, list) and all(isinstance(v, str) and "'" not in v for v in value):
        return "[" + ", ".join(f"'{v}'" for v in value) + "]"
    return repr(value)


class RegistryChange(Document):
    """A change inside one hive; ``check`` refuses when the hive no longer holds what the plan saw.

    ``hive`` is SYSTEM, SOFTWARE, ... of the Windows installation; with ``filesystem`` (the device of another
    filesystem of the disk, e.g. the ESP) it is the path of a hive file there (``/EFI/Microsoft/Boot/BCD``)."""
    hive: str
    key: str                              # inside the hive, control set resolved: ControlSet002\Services\...
    filesystem: str | None = None
    reason: str = ""

    def where(self) -> str:
        return f"{self.filesystem}:{self.hive}" if self.filesystem else self.hive

    def check(self, hive: Hive, path: str) -> None:
        current = json_of(hive.get(self.key, self.name))
        if current != self.old:
            raise ImageChangedSincePlan(f"{path}: {self.key}\\{self.name} is {current} now but was {self.old} "
                                        f"when planned; nothing in this hive was written, plan again")


class RegistrySet(RegistryChange):
    kind: Literal["registry_set"] = "registry_set"
    name: str                             # "" = the key's default value
    old: dict | None = None               # {"type": "REG_DWORD", "value": 3} before, None if absent
    new: dict                             # the same shape after (binary-like data as hex)

    @property
    def type(self) -> str:
        return self.new["type"]

    def describe(self) -> str:
        old = "absent" if self.old is None else shown(self.old["value"])
        name = self.name or "(default)"
        return f"set    {self.where()}\\{self.key}\\{name} = {shown(self.new['value'])} ({self.type}, was {old})"

    def perform(self, hive: Hive) -> None:
        rtype = type_from_name(self.type)
        hive.set(self.key, self.name, rtype, data_from_json(rtype, self.new["value"]))


class RegistryDeleteValue(RegistryChange):
    kind: Literal["registry_delete_value"] = "registry_delete_value"
    name: str
    old: dict

    def describe(self) -> str:
        return f"delete {self.where()}\\{self.key}\\{self.name} (was {shown(self.old['value'])})"

    def perform(self, hive: Hive) -> None:
        hive.delete_value(self.key, self.name)


class RegistryDeleteKey(RegistryChange):
    kind: Literal["registry_delete_key"] = "registry_delete_key"

    def describe(self) -> str:
        return f"delete {self.where()}\\{self.key}\\ (whole key)"

    def check(self, hive: Hive, path: str) -> None:
        """Deleting a key that is already gone changes nothing: no check."""

    def perform(self, hive: Hive) -> None:
        hive.delete_key(self.key)


REGISTRY_CHANGES = (RegistrySet, RegistryDeleteValue, RegistryDeleteKey)


# ---------------------------------------------------------------- files

class FileWrite(Document):
    kind: Literal["file_write"] = "file_write"
    path: str                             # Windows path, e.g. C:\Program Files\Citrix\x.cmd (or a path on filesystem)
    filesystem: str | None = None         # another filesystem of the disk (the ESP's device); None: the Windows volume
    sha256: str
    size: int
    old_sha256: str | None = None         # None: the file does not exist yet
    source: str = Field("", exclude=True)  # local file holding the content (never part of a report)
    reason: str = ""

    def describe(self) -> str:
        replacing = ", replaces a file" if self.old_sha256 else ""
        where = f"{self.filesystem}:" if self.filesystem else ""
        return f"write  {where}{self.path} ({self.size} bytes, sha256 {self.sha256[:12]}…{replacing})"

    def apply(self, guest) -> None:
        """Upload next to the target, check the bytes, then rename over it: never a half-written file at the
        name. The filesystem holding the file must be the one mounted (``Guest.on_filesystem``)."""
        target = guest.win_path(self.path)
        current = guest.checksum(target) if guest.is_file(target) else None
        if current != self.old_sha256:
            raise ImageChangedSincePlan(f"{self.path} changed since it was planned; plan again")
        staged = target + STAGED_SUFFIX
        guest.make_dirs(posixpath.dirname(target))
        try:
            guest.upload(self.source, staged)
            if guest.checksum(staged) != self.sha256:
                raise FileWriteFailed(f"{self.path}: the uploaded copy does not match its source")
            guest.sync_now()
            guest.move(staged, target)
        finally:
            if guest.path_exists(staged):
                guest.remove(staged)


# ---------------------------------------------------------------- partition tables

class PartitionTableWrite(Document):
    """Replace a disk's partition table (the partitions' contents stay where they are): checked against the table
    the plan saw, read back after writing, the old table's sectors put back if anything fails and kept in the image
    afterwards (``backup``, a guest path on the Windows volume: the first 34 sectors, then the last 33)."""
    kind: Literal["partition_table"] = "partition_table"
    device: str
    old: PartitionTable
    new: PartitionTable
    backup: str
    reason: str = ""

    def describe(self) -> str:
        return f"replace {self.device}'s partition table ({self.old.describe()}) with {self.new.describe()}"

    def apply(self, guest, local_dir) -> None:
        with guest.unmounted():
            saved = partitions.replace_table(guest, self.device, self.old, self.new)
        keep_backup(guest, local_dir, saved.head + saved.tail, self.backup)


class GptConversion(Document):
    """Convert a disk's MBR partition table to GPT in place, as MBR2GPT does: every partition keeps its start and
    end (its bytes are not touched), ``new`` adds the EFI system partition where the plan put it. The GPT describes
    a disk of ``disk_sectors`` (a grown differencing child may be larger than its parent). Checked against the MBR
    the plan saw, read back, the old sectors put back if anything fails and kept in the image (``backup``)."""
    kind: Literal["gpt_conversion"] = "gpt_conversion"
    device: str
    old: PartitionTable
    new: PartitionTable
    attributes: dict[int, int] = {}       # GPT attribute bits by partition number (WinRE's)
    sector_size: int
    disk_sectors: int
    backup: str
    reason: str = ""

    def describe(self) -> str:
        return (f"convert {self.device}'s partition table from {self.old.describe()} to {self.new.describe()} "
                f"(same partition extents; a disk of {self.disk_sectors} sectors)")

    def apply(self, guest, local_dir) -> None:
        sectors = gpt.encode(self.new, sector_size=self.sector_size, disk_sectors=self.disk_sectors,
                             attributes=self.attributes)
        with guest.unmounted():
            saved = gpt.write_converted(guest, self.device, self.old, sectors, (self.new, self.attributes))
        keep_backup(guest, local_dir, saved.head + saved.tail, self.backup)


def keep_backup(guest, local_dir, data: bytes, backup: str) -> None:
    """The sectors a table replaced, kept in the image at ``backup`` (staged, then renamed)."""
    local = local_dir / "partition-table.bin"
    local.write_bytes(data)
    guest.make_dirs(posixpath.dirname(backup))
    guest.upload(local, backup + STAGED_SUFFIX)
    guest.move(backup + STAGED_SUFFIX, backup)


# ---------------------------------------------------------------- filesystems

class FilesystemCreate(Document):
    """Put a new, empty FAT32 filesystem (an EFI system partition) on a partition, after the partition tables are
    written and before any file is: whatever the partition held before (``old``, as the plan saw it) is gone."""
    kind: Literal["filesystem_create"] = "filesystem_create"
    device: str
    fstype: Literal["vfat"] = "vfat"
    label: str = Field(max_length=11)
    old: str | None = None                # e.g. "ntfs 'System Reserved'"; None: a partition this plan adds
    reason: str = ""

    def describe(self) -> str:
        was = f", replacing {self.old}" if self.old else ""
        return f"format {self.device} as FAT32 {self.label!r}{was}"

    def apply(self, guest) -> None:
        with guest.unmounted():
            fat.format_fat32(guest, self.device, label=self.label)
