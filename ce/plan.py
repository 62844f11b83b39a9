"""Guest steps' planning and applying: ``Planner`` collects the changes a step wants (reading current values from
downloaded hives, so a plan applied twice is a no-op the second time); ``apply()`` performs exactly those and
returns the step's ``Result``.

Crash safety lives here once: registry changes go through ``registry.commit_hive`` (verified, backed up, swapped by
a rename) one hive at a time, files are staged next to their target and renamed over it (``FileWrite.apply``), a
partition table is read back and its old sectors put back on failure (``PartitionTableWrite.apply``). Hives and
files may be on any filesystem of the disk (the ESP's BCD), not only the Windows volume. Partition tables go first
(files and hives live inside partitions), then files: a registry value may point at a file (a boot driver, the
first-boot runner), and a value pointing at a missing file is the one order that can leave an image unbootable.
The change kinds themselves (what each checks, performs and says) are in ``ce.changes``; the disk steps plan with
those kinds too, without a Planner.
"""
from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import firstboot, ntfs, registry, staging
from .changes import REGISTRY_CHANGES, ChangeOutcome, FileWrite, FilesystemCreate, GptConversion, \
    PartitionTableWrite, Plan, RegistryDeleteKey, RegistryDeleteValue, RegistrySet, Result, StepWarning
from .changes.guest import json_of
from .document import Facts
from .errors import CeError, PlanConflict, RegistryHiveUnknown
from .firstboot import FirstBootAction
from .guest import Guest, WindowsRoot, partitions
from .registry import Hive, RegType, RegValue

HIVES = ("SYSTEM", "SOFTWARE", "SECURITY", "SAM", "DEFAULT")


# ---------------------------------------------------------------- planning

def hive_path(guest: Guest, root: WindowsRoot, hive: str) -> str:
    return guest.win_path(f"{root.systemroot}/System32/config/{hive}")


def locate_hive(guest: Guest, root: WindowsRoot, hive: str, filesystem: str | None) -> str:
    """The guest path of a change's hive, with its filesystem mounted: System32\\config for the Windows hives,
    the given path for a hive on another filesystem."""
    return hive_path(guest, root, hive) if filesystem is None else guest.win_path(hive)


class CommitFacts(Facts):
    """One hive committed: its path in the image, its sha256 before and after, the backup kept, values changed."""
    guestPath: str
    sha256Before: str
    sha256After: str
    backupPath: str | None = None
    backupCreated: bool
    changes: int
    warnings: list[str] = []


class GuestFacts(Facts):
    """The facts of a step that edits the Windows image: the hives committed (a result)."""
    commits: list[CommitFacts] | None = None


class Planner:
    """Collects the changes a step wants, reading current values from downloaded hives. Setting a value to what
    it already is plans nothing, so a plan applied twice is a no-op the second time."""

    def __init__(self, step: str, guest: Guest, root: WindowsRoot, workdir: Path):
        self.plan = Plan(step=step)
        self.guest, self.root, self.workdir = guest, root, workdir
        self._hives: dict[tuple[str | None, str], Hive] = {}
        self._first_boot: list[FirstBootAction] = []
        self._new_filesystems: set[str] = set()

    def hive(self, name: str, filesystem: str | None = None) -> Hive:
        """A Windows hive (SYSTEM, SOFTWARE, ...), or with ``filesystem`` the hive file at path ``name`` on that
        filesystem of the disk (the BCD on the ESP)."""
        if filesystem is None and name not in HIVES:
            raise RegistryHiveUnknown(f"unknown hive {name!r}; known: {', '.join(HIVES)}")
        if (filesystem, name) not in self._hives:
            with self.guest.on_filesystem(filesystem):
                path = locate_hive(self.guest, self.root, name, filesystem)
                local = registry.download_hive(self.guest, path, self.workdir)
            device = filesystem or self.root.device
            self._hives[(filesystem, name)] = Hive.open(local, label=f"{device}:{path}")
        return self._hives[(filesystem, name)]

    def close(self) -> None:
        for hive in self._hives.values():
            hive.close()
        self._hives.clear()

    def set(self, hive: str, key: str, name: str, rtype: RegType, data: Any, reason: str = "", *,
            filesystem: str | None = None) -> None:
        registry.encode_value(rtype, data)          # refuse bad data at plan time, not half-way through apply
        new = RegValue(rtype, data).to_json()
        for c in self.plan.changes:                 # two concerns may want the same value: plan it once
            if isinstance(c, RegistrySet) and (c.filesystem, c.hive, c.key.lower(), c.name.lower()) == \
                    (filesystem, hive, key.lower(), name.lower()):
                if c.new != new:
                    raise PlanConflict(f"{hive}\\{key}\\{name} is planned as {c.new['value']!r} and as "
                                       f"{new['value']!r}")
                return
        old = self.hive(hive, filesystem).get(key, name)
        if old is not None and old.type == rtype and old.data == data:
            return
        self.plan.changes.append(RegistrySet(hive=hive, key=key, name=name, old=json_of(old), new=new,
                                             reason=reason, filesystem=filesystem))

    def delete_value(self, hive: str, key: str, name: str, reason: str = "", *, filesystem: str | None = None) -> None:
        old = self.hive(hive, filesystem).get(key, name)
        if old is not None:
            self.plan.changes.append(RegistryDeleteValue(hive=hive, key=key, name=name, old=old.to_json(),
                                                         reason=reason, filesystem=filesystem))

    def delete_key(self, hive: str, key: str, reason: str = "", *, filesystem: str | None = None) -> None:
        if self.hive(hive, filesystem).key_exists(key):
            self.plan.changes.append(RegistryDeleteKey(hive=hive, key=key, reason=reason, filesystem=filesystem))

    def write_file(self, path: str, source: Path, reason: str = "", *, filesystem: str | None = None) -> None:
        """Plan ``path`` (a Windows path, or with ``filesystem`` a path on that filesystem) to hold ``source``."""
        digest, size = registry.sha256_file(source), source.stat().st_size
        planned = [c for c in self.plan.changes if isinstance(c, FileWrite) and c.filesystem == filesystem
                   and c.path.lower() == path.lower()]
        if planned:
            if planned[0].sha256 != digest:
                raise PlanConflict(f"{path} is planned twice with different contents")
            return
        if filesystem in self._new_filesystems:
            old = None                              # the filesystem is made by this plan: it holds nothing yet
        else:
            with self.guest.on_filesystem(filesystem):
                guest_path = self.guest.win_path(path)
                old = self.guest.checksum(guest_path) if self.guest.is_file(guest_path) else None
        if old != digest:
            self.plan.changes.append(FileWrite(path=path, sha256=digest, size=size, old_sha256=old,
                                               source=str(source), reason=reason, filesystem=filesystem))

    def replace_partition_table(self, device: str, new: partitions.PartitionTable, reason: str = "") -> None:
        """Plan ``device``'s partition table to become ``new`` (the partitions' contents stay in place)."""
        old = partitions.read_table(self.guest, device)
        if old == new:
            return
        self.plan.changes.append(PartitionTableWrite(device=device, old=old, new=new, backup=self._table_backup(device),
                                                     reason=reason))

    def _table_backup(self, device: str) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return f"{self.root.systemroot}/ce-backup/partition-table-{device.rsplit('/', 1)[-1]}.{stamp}"

    def create_filesystem(self, device: str, label: str, *, old: str | None, reason: str = "") -> None:
        """Plan a new, empty FAT32 filesystem on ``device`` (a partition the plan's table has, or will have); files
        planned on it afterwards are new files."""
        self._new_filesystems.add(device)
        self.plan.changes.append(FilesystemCreate(device=device, label=label, old=old, reason=reason))

    def convert_to_gpt(self, device: str, new: partitions.PartitionTable, *, attributes: dict[int, int],
                       sector_size: int, disk_sectors: int, reason: str = "") -> None:
        """Plan ``device``'s MBR table to become the GPT ``new`` (same partition extents) on a disk of
        ``disk_sectors``."""
        old = partitions.read_table(self.guest, device)
        self.plan.changes.append(GptConversion(device=device, old=old, new=new, attributes=attributes,
                                               sector_size=sector_size, disk_sectors=disk_sectors,
                                               backup=self._table_backup(device), reason=reason))

    def write_bytes(self, path: str, data: bytes, reason: str = "") -> None:
        """write_file for content made by the step itself (scripts, parameter files)."""
        source = Path(tempfile.mkstemp(dir=self.workdir, prefix="content-")[1])
        source.write_bytes(data)
        self.write_file(path, source, reason=reason)

    def first_boot(self, name: str, script: str, params: dict, *, retries: int = 3, required: bool = False,
                   timeout: int = 3600, reason: str = "") -> FirstBootAction:
        """Stage ``script`` (shipped in ce/data/firstboot) to run at first boot with ``params`` as data."""
        action = firstboot.make_action(name, script, params, retries=retries, required=required, timeout=timeout,
                                       reason=reason)
        if action.id in {a.id for a in self._first_boot}:
            return action
        self._first_boot.append(action)             # staged files and Setup values are re-checked even when
        staged = {a.id for a in firstboot.read_staged(self.guest, self.root.systemroot)}   # already staged
        if action.id not in staged:
            self.plan.changes.append(action)
        return action

    def finish(self) -> None:
        """Turn the first-boot actions into the files and registry values that run them, after staging the
        restore of any restrictive hive permissions the hive replacement will lose."""
        checked: set[str] = set()
        while True:
            hives = {c.hive for c in self.plan.changes if isinstance(c, REGISTRY_CHANGES) and c.filesystem is None}
            hives |= {"SYSTEM"} if self._first_boot else set()     # arming first boot writes SYSTEM\Setup
            if not hives - checked:
                break
            for name in sorted(hives - checked):
                checked.add(name)
                self._keep_permissions(name)
        firstboot.stage(self, self._first_boot)

    def _keep_permissions(self, hive: str) -> None:
        """ntfs-3g gives the replacing hive "Everyone: full control" and libguestfs cannot copy the original
        descriptor (registry.commit_hive); a first-boot action puts the original back before anyone logs on."""
        path = hive_path(self.guest, self.root, hive)
        descriptor = self.guest.xattr(path, registry.NTFS_ACL_XATTR)
        if ntfs.grants_everyone_full_control(descriptor):
            return
        self.first_boot(f"restore-acl-{hive.lower()}", "restore-file-acl.ps1",
                        {"path": "C:" + path.replace("/", "\\"), "sd": descriptor.hex()}, retries=3,
                        required=True, timeout=300, reason=f"restore {hive}'s original NTFS permissions, which "
                        f"replacing the hive offline resets to Everyone: full control")

    def warn(self, code: str, message: str) -> None:
        self.plan.warnings.append(StepWarning(code=code, message=message))



# ---------------------------------------------------------------- applying

def apply(guest: Guest, root: WindowsRoot, plan: Plan, *, stamp: str | None = None) -> Result:
    """Perform exactly ``plan``'s changes on the read-write mounted Windows root. Each change is checked against
    the value the plan saw; if the image changed in between, nothing of that hive is written."""
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    status = {id(c): "not_attempted" for c in plan.changes}
    commits, warnings, error = [], list(plan.warnings), None
    try:
        with staging.scratch_dir("apply") as tmp:      # hive copies; a killed run's are removed by the next step
            for change in plan.changes:                 # the partitions' places first: files and hives live in them
                if isinstance(change, (PartitionTableWrite, GptConversion)):
                    status[id(change)] = "failed"
                    change.apply(guest, Path(tmp))
                    status[id(change)] = "applied"
            for change in plan.changes:                 # new filesystems before the files that go on them
                if isinstance(change, FilesystemCreate):
                    status[id(change)] = "failed"
                    change.apply(guest)
                    status[id(change)] = "applied"
            for filesystem, files in grouped(plan, (FileWrite,), lambda c: c.filesystem).items():
                with guest.on_filesystem(filesystem):
                    for change in files:
                        status[id(change)] = "failed"
                        change.apply(guest)
                        status[id(change)] = "applied"
            for (filesystem, hive_name), changes in grouped(plan, REGISTRY_CHANGES,
                                                            lambda c: (c.filesystem, c.hive)).items():
                with guest.on_filesystem(filesystem):
                    result = apply_hive(guest, root, filesystem, hive_name, changes, Path(tmp), stamp, status)
                commits.append(result.to_json())
                warnings += [StepWarning(code="hive_permissions", message=w) for w in result.warnings]
            for change in plan.changes:
                if isinstance(change, FirstBootAction):      # realised by the files and values above
                    status[id(change)] = "applied"
    except CeError as exc:
        error = exc.to_dict()
    except RuntimeError as exc:           # libguestfs
        error = {"code": "guest_error", "message": f"libguestfs: {exc}"}
    finally:
        guest.sync()
    return Result(step=plan.step, warnings=warnings, facts={"commits": commits}, error=error,
                  outcomes=[ChangeOutcome(change=c, status=status[id(c)]) for c in plan.changes])


def grouped(plan: Plan, kinds: tuple, key) -> dict:
    """The plan's changes of ``kinds`` by ``key(change)``, in plan order (Windows volume first where it is first)."""
    groups: dict = {}
    for change in plan.changes:
        if isinstance(change, kinds):
            groups.setdefault(key(change), []).append(change)
    return groups


def apply_hive(guest: Guest, root: WindowsRoot, filesystem: str | None, hive_name: str, changes: list, tmp: Path,
               stamp: str, status: dict) -> registry.CommitResult:
    path = locate_hive(guest, root, hive_name, filesystem)
    registry.cleanup_stale(guest, path)
    local = registry.download_hive(guest, path, tmp)
    with Hive.open(local, write=True, label=f"{filesystem or root.device}:{path}") as hive:
        for change in changes:
            change.check(hive, path)
            change.perform(hive)
        for change in changes:
            status[id(change)] = "failed"
        result = registry.commit_hive(guest, path, hive, backup_stamp=stamp)
    for change in changes:
        status[id(change)] = "applied"
    return result
