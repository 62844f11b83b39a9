"""What the diagnostics bundle takes from the image, read through a read-only guest: the sources (``select``), then
their byte-identical copies (``copy``).

``windowsEventLogs`` is Windows' own side: the event logs that matter for boot, drivers, setup and provisioning
(``winevt\\Logs``; a channel's ``/`` is ``%4`` in its file name), every ``Citrix-*`` channel, and the text logs of
setup, servicing, drivers and domain join, the boot log and the minidumps. ``Security.evtx`` and ``MEMORY.DMP``
are never taken (credentials and audit trails; gigabytes): the manifest lists them as left out, like every other
channel that is not selected (by name only: sizing each costs a round trip to the appliance).

``ipsData`` is what ce (the image-portability worker) left in the image: the first-boot plan, state, log and
action parameters, the hive backups it made (``System32\\config\\ce-backup``; SAM's and SECURITY's are left out:
they hold password hashes and LSA secrets) and the partition-table backups (``<systemroot>\\ce-backup``).

Every copy is checked: the bytes downloaded must have the sha256 libguestfs computes in the guest, or the step fails
(``diagnostics_copy_mismatch``) rather than ship a copy that is not the image's.
"""
from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from pathlib import Path

from ..errors import DiagnosticsCopyMismatch
from ..guest import Guest
from .bundle import decide

EVENT_LOGS = ("System", "Application", "Setup", "Microsoft-Windows-Kernel-Boot%4Operational",
              "Microsoft-Windows-Kernel-PnP%4Configuration", "Microsoft-Windows-Kernel-PnP%4Device Configuration",
              "Microsoft-Windows-Diagnostics-Performance%4Operational", "Microsoft-Windows-GroupPolicy%4Operational",
              "Microsoft-Windows-TaskScheduler%4Operational", "Microsoft-Windows-Bits-Client%4Operational",
              "Microsoft-Windows-Ntfs%4Operational", "Microsoft-Windows-WindowsUpdateClient%4Operational",
              "Microsoft-Windows-TerminalServices-LocalSessionManager%4Operational")
NEVER = {"security.evtx": "holds the audit trail and account names: not collected",
         "memory.dmp": "a full memory dump (gigabytes, and it holds secrets): not collected"}
TEXT_LOGS = ("Panther/setupact.log", "Panther/setuperr.log", "Panther/UnattendGC/setupact.log",
             "Panther/UnattendGC/setuperr.log", "System32/Sysprep/Panther/setupact.log",
             "System32/Sysprep/Panther/setuperr.log", "INF/setupapi.dev.log", "INF/setupapi.app.log",
             "INF/setupapi.setup.log", "Logs/CBS/CBS.log", "Logs/DISM/dism.log", "debug/NetSetup.LOG",
             "ntbtlog.txt", "setupact.log", "setuperr.log", "diagerr.xml", "diagwrn.xml")
FIRSTBOOT = "Setup/ce-firstboot"
HIVE_BACKUPS = "System32/config/ce-backup"
PARTITION_BACKUPS = "ce-backup"
CREDENTIAL_HIVES = ("sam.", "security.")


@dataclass
class Source:
    """A file of the image the bundle takes: where it is, where it goes, how much of it."""
    guest_path: str
    windows_path: str
    bundle_path: str
    group: str
    size: int
    keep: int = 0                  # bytes that go into the bundle (the tail when cut)
    cut: str = ""

    def row(self) -> dict:
        return {"source": self.windows_path, "path": self.bundle_path if self.keep else "", "group": self.group,
                "size": self.size, "keep": self.keep, **({"cut": self.cut} if self.cut else {})}


def windows_path(guest_path: str) -> str:
    return "C:" + guest_path.replace("/", "\\")


def select(guest: Guest, systemroot: str, *, events: bool, ips: bool, max_file: int, max_bundle: int,
           used: int) -> tuple[list[Source], list[dict]]:
    """The image's sources in bundle order, each with what the caps leave of it (``used``: bytes already planned
    for ce's own side), and the ones left out without a size (not selected, or never taken)."""
    found: list[Source] = []
    left: list[dict] = []
    if ips:
        found += _folder(guest, f"{systemroot}/{FIRSTBOOT}", "image/ce-firstboot", "ipsData", recursive=True)
    if events:
        logs = f"{systemroot}/System32/winevt/Logs"
        names = {n.lower(): n for n in _names(guest, logs)}
        wanted = [names.pop(f"{n}.evtx".lower()) for n in EVENT_LOGS if f"{n}.evtx".lower() in names]
        wanted += [names.pop(k) for k in sorted(k for k in names if k.startswith("citrix-") and k.endswith(".evtx"))]
        found += [_source(guest, f"{logs}/{n}", f"image/winevt/{n}", "windowsEventLogs") for n in wanted]
        for key, name in sorted(names.items()):
            why = NEVER.get(key, "not one of the channels collected (boot, drivers, setup, provisioning, Citrix)")
            left.append({"source": windows_path(f"{logs}/{name}"), "group": "windowsEventLogs",
                         "cut": f"left out: {why}"})
        for rel in TEXT_LOGS:
            path = _existing(guest, f"{systemroot}/{rel}")
            if path:
                found.append(_source(guest, path, "image/logs/" + rel.replace("/", "_"), "windowsEventLogs"))
        found += _folder(guest, f"{systemroot}/Minidump", "image/minidump", "windowsEventLogs")
        dump = _existing(guest, f"{systemroot}/MEMORY.DMP")
        if dump:
            left.append({"source": windows_path(dump), "group": "windowsEventLogs",
                         "size": guest.file_size(dump), "cut": f"left out: {NEVER['memory.dmp']}"})
    if ips:
        for source in _folder(guest, f"{systemroot}/{HIVE_BACKUPS}", "image/hive-backups", "ipsData"):
            if posixpath.basename(source.guest_path).lower().startswith(CREDENTIAL_HIVES):
                left.append({"source": source.windows_path, "group": "ipsData", "size": source.size,
                             "cut": "left out: a backup of SAM or SECURITY holds password hashes and LSA secrets"})
            else:
                found.append(source)
        found += _folder(guest, f"{systemroot}/{PARTITION_BACKUPS}", "image/partition-table-backups", "ipsData")
    for source in found:
        source.keep, source.cut = decide(source.bundle_path, source.size, used, max_file, max_bundle)
        used += source.keep
    return found, left


def copy(guest: Guest, source: Source, scratch: Path) -> tuple[Path, str]:
    """The source's bytes (its tail when cut) in a local file, and the sha256 of the whole source as the guest
    computes it. A full copy whose sha256 differs from the guest's raises DiagnosticsCopyMismatch."""
    local = scratch / "copy"
    guest.download(source.guest_path, str(local))
    in_guest = guest.checksum(source.guest_path, "sha256")
    digest = hashlib.sha256()
    with open(local, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != in_guest:
        raise DiagnosticsCopyMismatch(f"{source.windows_path}: the copy's sha256 {digest.hexdigest()} is not the "
                                      f"image's ({in_guest}); nothing was uploaded")
    if source.keep < source.size:
        with open(local, "rb") as f, open(scratch / "tail", "wb") as out:
            f.seek(source.size - source.keep)
            while chunk := f.read(1 << 20):
                out.write(chunk)
        (scratch / "tail").replace(local)
    return local, in_guest


def _names(guest: Guest, folder: str) -> list[str]:
    path = _existing(guest, folder)
    return [n for n in guest.listdir(path) if guest.is_file(f"{path}/{n}")] if path and guest.is_dir(path) else []


def _folder(guest: Guest, folder: str, prefix: str, group: str, recursive: bool = False) -> list[Source]:
    path = _existing(guest, folder)
    if not path or not guest.is_dir(path):
        return []
    out = []
    for name in sorted(guest.listdir(path)):
        full = f"{path}/{name}"
        if guest.is_file(full):
            out.append(_source(guest, full, f"{prefix}/{name}", group))
        elif recursive and guest.is_dir(full):
            out += _folder(guest, full, f"{prefix}/{name}", group, recursive=True)
    return out


def _source(guest: Guest, path: str, bundle_path: str, group: str) -> Source:
    return Source(guest_path=path, windows_path=windows_path(path), bundle_path=bundle_path, group=group,
                  size=guest.file_size(path))


def _existing(guest: Guest, path: str) -> str:
    resolved = guest.win_path(path)
    return resolved if guest.path_exists(resolved) else ""
