"""One libguestfs session per step: launch, find the Windows root, mount it, address Windows paths.

Launching the appliance is the dominant cost (13-25 s under TCG), so a step opens one ``Guest`` and does all its
work through it. Read-only sessions add the drives read-only (libguestfs puts a throwaway overlay in front), so
inspect and dry runs can never change the input. Nothing outside this module touches the libguestfs handle
(``Guest.g``): callers use ``Guest``'s methods. The appliance's accelerator choice and watchdog are in
``ce/appliance.py``.
"""
from __future__ import annotations

import logging
import os
import posixpath
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass

from .. import faults, ntfs
from ..document import camel_keys
from ..appliance import ACCEL_ENV, choose_accel, deadline, qemu_children
from .files import GuestFiles
from ..errors import (ApplianceError, BitLockerVolume, BlankDisk, GuestError, HibernatedVolume,
                     MultipleWindowsRoots, NotWindows, UncleanVolume)

log = logging.getLogger(__name__)

LAUNCH_TIMEOUT_ENV = "CE_GUEST_LAUNCH_TIMEOUT"
DEFAULT_LAUNCH_TIMEOUT = 600.0        # TCG on a busy 2-core box can take minutes; KVM takes seconds
BITLOCKER_OEM_ID = b"-FVE-FS-"
SYSTEMROOTS = ("Windows", "WINNT")
ROOT_MARKERS = ("System32/config/SYSTEM", "System32/config/SOFTWARE", "System32/cmd.exe")
NTFS_PROBE_HIBERNATED, NTFS_PROBE_UNCLEAN = 14, 15
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
PARTITION_ROLES = {ESP_GUID: "efi-system", "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "microsoft-reserved",
                   "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "basic-data",
                   "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "windows-recovery",
                   "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "linux", "0x07": "ntfs/exfat", "0x27": "windows-recovery",
                   "0xee": "gpt-protective", "0x83": "linux", "0x0c": "fat32", "0xef": "efi-system"}


@dataclass
class Drive:
    path: str
    format: str = "raw"
    readonly: bool = True


@dataclass
class Filesystem:
    device: str
    type: str
    label: str = ""
    uuid: str = ""
    size: int = 0
    partition: int | None = None
    partition_type: str = ""          # GPT type GUID or MBR id ("0x07")
    role: str = ""                    # "efi-system", "microsoft-reserved", "basic-data", ...
    bitlocker: bool = False
    ntfs_state: str = ""              # "clean" | "hibernated" | "unclean" for NTFS
    offset: int | None = None         # the partition's first byte on its disk
    partition_guid: str = ""          # GPT: the partition's unique GUID (upper case)
    active: bool | None = None        # MBR: the boot (active) flag

    def to_json(self) -> dict:
        return camel_keys({k: v for k, v in self.__dict__.items() if v not in ("", None) or k in ("device", "type")})


@dataclass
class WindowsRoot:
    device: str
    systemroot: str           # guest path with the on-disk case, e.g. "/Windows"
    arch: str                 # from System32/cmd.exe's PE header, e.g. "x86_64"


def partition_parent(partition: str) -> str:
    """/dev/sda3 -> /dev/sda (libguestfs names drives /dev/sdX, partitions /dev/sdXN)."""
    return re.sub(r"\d+$", "", partition)


def unescape(text: str) -> str:
    """blkid escapes spaces in labels ("System\\ Reserved")."""
    return re.sub(r"\\(.)", r"\1", text)


# ---------------------------------------------------------------- session

class Guest(GuestFiles):
    """A launched libguestfs appliance over one or more drives. Use as a context manager."""

    def __init__(self, drives: list[Drive], *, launch_timeout: float | None = None, memsize: int | None = None):
        if not drives:
            raise GuestError("no disk given to open")
        self.drives = drives
        self.launch_timeout = launch_timeout or float(os.environ.get(LAUNCH_TIMEOUT_ENV, DEFAULT_LAUNCH_TIMEOUT))
        self.memsize = memsize
        self.g: guestfs.GuestFS | None = None
        self.accel = ""
        self.launch_seconds = 0.0
        self._mounted_rw = False
        self._windows_mount: tuple[str, bool] = ("", True)    # (device, read-only) of the Windows volume
        self._blkid_cache: dict[str, dict] = {}

    def __enter__(self) -> "Guest":
        self.launch()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def launch(self) -> None:
        import guestfs
        g = guestfs.GuestFS(python_return_dict=True)
        g.set_backend(os.environ.get("LIBGUESTFS_BACKEND", "direct"))
        self.accel = choose_accel()
        if self.accel == "tcg":
            g.set_backend_settings(["force_tcg"])
        if self.memsize:
            g.set_memsize(self.memsize)
        for d in self.drives:
            try:
                g.add_drive_opts(d.path, format=d.format, readonly=d.readonly)
            except RuntimeError as exc:
                g.close()
                raise GuestError(f"cannot attach {d.path} as a {d.format} disk: {exc}") from exc
        before = qemu_children()
        started = time.monotonic()
        try:
            # The handle cannot be asked for its pid while launch() runs: find the qemu child it started.
            with deadline(self.launch_timeout, "starting the libguestfs appliance",
                          lambda: qemu_children() - before):
                g.launch()
        except RuntimeError as exc:
            g.close()
            reason = " ".join(str(exc).split())[:300]
            raise ApplianceError(f"could not start the libguestfs appliance ({self.accel}): {reason}; "
                                 f"run `libguestfs-test-tool` for details, or set {ACCEL_ENV}=tcg") from exc
        self.launch_seconds = time.monotonic() - started
        self.g = faults.instrument(g)
        faults.note("# launch")
        log.info("appliance up in %.1f s (%s)", self.launch_seconds, self.accel)

    def close(self) -> None:
        if self.g is None:
            return
        g, self.g = self.g, None
        try:
            g.umount_all()
            g.shutdown()
        except RuntimeError as exc:
            log.warning("appliance shutdown: %s", exc)
        finally:
            g.close()

    @contextmanager
    def deadline(self, seconds: float, what: str):
        """Bound a sequence of libguestfs calls in time (the step timeout)."""
        pid = self.g.get_pid()
        with deadline(seconds, what, lambda: {pid}):
            yield

    # ------------------------------------------------------------ discovery
    # Every libguestfs call is a round trip to the appliance (~0.1-1 s under TCG), so facts come from one blkid
    # probe per device and partition rather than from list_filesystems / inspect_os (45 s for 12 disks here).

    def devices(self) -> list[str]:
        return self.g.list_devices()

    def _blkid(self, dev: str) -> dict:
        if dev not in self._blkid_cache:
            try:
                self._blkid_cache[dev] = self.g.blkid(dev)
            except RuntimeError:
                self._blkid_cache[dev] = {}
        return self._blkid_cache[dev]

    def partition_table(self, device: str) -> str:
        """``gpt``, ``mbr`` or ``none``."""
        return {"gpt": "gpt", "dos": "mbr"}.get(self._blkid(device).get("PTTYPE", ""), "none")

    def disk_id(self, device: str) -> str:
        """The partition table's own identifier: GPT's disk GUID (upper case), or the MBR disk signature (the u32
        at byte 440) as 8 lower-case hex digits; "" without a table."""
        value = self._blkid(device).get("PTUUID", "")
        return value.upper() if self.partition_table(device) == "gpt" else value.lower()

    def partitions(self, device: str | None = None) -> list[str]:
        return [p for p in self.g.list_partitions() if device is None or partition_parent(p) == device]

    def filesystems(self, device: str | None = None) -> list[Filesystem]:
        """Every partition of ``device`` (default: all drives), or the whole device if it is unpartitioned."""
        candidates = self.partitions(device)
        for dev in self.devices():
            if (device is None or dev == device) and self.partition_table(dev) == "none":
                candidates.append(dev)
        return [self._describe(dev) for dev in candidates]

    def _describe(self, dev: str) -> Filesystem:
        info = self._blkid(dev)
        fs = Filesystem(device=dev, type=info.get("TYPE", "unknown"), label=unescape(info.get("LABEL", "")),
                        uuid=info.get("UUID", ""))
        fs.bitlocker = fs.type.lower() == "bitlocker" or self._has_bitlocker_id(dev)
        if fs.bitlocker:
            fs.type = "BitLocker"
        if "PART_ENTRY_NUMBER" in info:
            fs.partition = int(info["PART_ENTRY_NUMBER"])
            fs.size = int(info.get("PART_ENTRY_SIZE", 0)) * 512
            kind = info.get("PART_ENTRY_TYPE", "")
            fs.partition_type = kind.upper() if info.get("PART_ENTRY_SCHEME") == "gpt" else "0x%02x" % int(kind, 16)
            fs.role = PARTITION_ROLES.get(fs.partition_type, "")
            fs.offset = int(info.get("PART_ENTRY_OFFSET", 0)) * 512        # blkid counts 512-byte units
            if info.get("PART_ENTRY_SCHEME") == "gpt":
                fs.partition_guid = info.get("PART_ENTRY_UUID", "").upper()
            else:
                fs.active = int(info.get("PART_ENTRY_FLAGS", "0"), 16) & 0x80 != 0
        if fs.type == "ntfs":
            fs.ntfs_state = self._ntfs_state(dev)
        return fs

    def _has_bitlocker_id(self, dev: str) -> bool:
        try:
            return self.g.pread_device(dev, 8, 3) == BITLOCKER_OEM_ID
        except RuntimeError:
            return False

    def _ntfs_state(self, dev: str) -> str:
        """clean | hibernated | unclean (ntfs-3g's verdict, from hiberfil.sys and $LogFile) | dirty (Windows'
        own VOLUME_IS_DIRTY flag, which ntfs-3g ignores) | unreadable."""
        try:
            code = self.g.ntfs_3g_probe(True, dev)
            if code == 0 and ntfs.volume_is_dirty(lambda offset, size: self.g.pread_device(dev, size, offset)):
                return "dirty"
        except (RuntimeError, GuestError):
            return "unreadable"
        return {0: "clean", NTFS_PROBE_HIBERNATED: "hibernated", NTFS_PROBE_UNCLEAN: "unclean"}.get(code,
                                                                                                      f"probe-{code}")

    def windows_root(self, root: str | None = None, device: str | None = None) -> WindowsRoot:
        """The single Windows installation on ``device`` (default: all drives), or a clear error saying why
        there is none. A Windows root is an NTFS volume with a system root (Windows, WINNT) holding
        System32/config/SYSTEM and SOFTWARE and System32/cmd.exe, as libguestfs's own inspection defines it."""
        filesystems = self.filesystems(device)
        roots = [r for fs in filesystems if fs.type == "ntfs" and (r := self._windows_root_on(fs))]
        if root:
            chosen = [r for r in roots if r.device == root]
            if not chosen:
                raise NotWindows(f"{root} is not a Windows root; Windows roots found: "
                                 f"{', '.join(r.device for r in roots) or 'none'}")
            roots = chosen
        if len(roots) > 1:
            described = "; ".join(f"{r.device} ({r.systemroot})" for r in roots)
            raise MultipleWindowsRoots(f"the disk holds {len(roots)} Windows installations: {described}; "
                                       f"choose one with --root DEVICE")
        if not roots:
            self._explain_no_windows(filesystems, device)
        return roots[0]

    def _windows_root_on(self, fs: Filesystem) -> WindowsRoot | None:
        g = self.g
        try:
            g.mount_ro(fs.device, "/")
        except RuntimeError:
            return None
        try:
            for candidate in SYSTEMROOTS:
                systemroot = self._existing(f"/{candidate}")
                if systemroot and all(g.is_file(self._existing(f"{systemroot}/{p}") or "/-")
                                      for p in ROOT_MARKERS):
                    cmd = self._existing(f"{systemroot}/System32/cmd.exe")
                    arch = self._arch(cmd)
                    return WindowsRoot(device=fs.device, systemroot=systemroot, arch=arch)
            return None
        finally:
            g.umount_all()

    def _existing(self, path: str) -> str:
        try:
            resolved = self.g.case_sensitive_path(path)
        except RuntimeError:
            return ""
        return resolved if self.g.exists(resolved) else ""

    def _arch(self, path: str) -> str:
        try:
            return self.g.file_architecture(path)
        except RuntimeError:
            return "unknown"

    def _explain_no_windows(self, filesystems: list[Filesystem], device: str | None) -> None:
        if any(fs.bitlocker for fs in filesystems):
            locked = ", ".join(fs.device for fs in filesystems if fs.bitlocker)
            raise BitLockerVolume(f"{locked} is BitLocker-encrypted and cannot be read offline; decrypt the volume "
                                  f"(manage-bde -off C:) or suspend protection before exporting the image")
        readable = [fs for fs in filesystems if fs.type not in ("unknown", "swap", "")]
        if not readable:
            if all(self.partition_table(d) == "none" for d in self.devices() if device in (None, d)):
                raise BlankDisk("the disk is blank: no partition table and no filesystem; attach the image's "
                                "system disk, not a new or wiped one")
            raise NotWindows("the disk has partitions but no filesystem libguestfs can read")
        other = self._other_os(readable)
        kinds = ", ".join(f"{fs.device} ({fs.type})" for fs in readable)
        raise NotWindows(f"no Windows installation found{'; the disk holds ' + other if other else ''}; "
                         f"filesystems: {kinds}")

    def _other_os(self, filesystems: list[Filesystem]) -> str:
        """Name a non-Windows OS for the error message, from its /etc/os-release (e.g. "Debian GNU/Linux 12")."""
        g = self.g
        for fs in filesystems:
            if fs.type not in ("ext2", "ext3", "ext4", "xfs", "btrfs"):
                continue
            try:
                g.mount_ro(fs.device, "/")
                text = g.read_file("/etc/os-release").decode(errors="replace") if g.is_file("/etc/os-release") \
                    else ""
            except RuntimeError:
                text = ""
            finally:
                g.umount_all()
            if match := re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.M):
                return f"{match.group(1)} on {fs.device}"
        return ""

    # ------------------------------------------------------------ mounting

    def mount_windows(self, root: WindowsRoot | str, *, readonly: bool = True) -> None:
        """Mount the Windows volume at /. Refuses a write mount of a hibernated or dirty NTFS."""
        device = root.device if isinstance(root, WindowsRoot) else root
        g = self.g
        self._windows_mount = (device, readonly)
        if readonly:
            g.mount_ro(device, "/")
            return
        state = self._ntfs_state(device) if g.vfs_type(device) == "ntfs" else "clean"
        if state == "hibernated":
            raise HibernatedVolume(f"{device} is hibernated (Fast Startup or hibernation): writing would lose the "
                                   f"saved session; boot Windows and shut down fully (shutdown /s /t 0) first")
        if state in ("unclean", "dirty"):
            raise UncleanVolume(f"{device} was not shut down cleanly (NTFS {state}: a crash, or a snapshot of a "
                                f"running VM); boot Windows once (or run chkdsk /f) and shut down normally first")
        if state != "clean":
            raise GuestError(f"{device} cannot be checked for a clean shutdown ({state}); refusing to write to it")
        g.mount(device, "/")
        self._mounted_rw = True

    @contextmanager
    def on_filesystem(self, device: str | None):
        """Another filesystem of the disk (the ESP, a recovery volume) mounted at / in place of the Windows volume,
        in the Windows mount's mode, for the block; the Windows volume is mounted back afterwards. ``None`` (or
        the Windows device) is the Windows volume itself."""
        windows, readonly = self._windows_mount
        if device is None or device == windows:
            yield
            return
        if not readonly:
            self.g.sync()
        self.g.umount_all()
        try:
            (self.g.mount_ro if readonly else self.g.mount)(device, "/")
            yield
        finally:
            if not readonly:
                self.g.sync()
            self.g.umount_all()
            (self.g.mount_ro if readonly else self.g.mount)(windows, "/")

    @contextmanager
    def unmounted(self):
        """Nothing of the disk mounted for the block (a partition table being rewritten); the Windows volume is
        mounted back afterwards, in its mode."""
        windows, readonly = self._windows_mount
        if not readonly:
            self.g.sync()
        self.g.umount_all()
        try:
            yield
        finally:
            if windows:
                (self.g.mount_ro if readonly else self.g.mount)(windows, "/")

    def win_path(self, path: str) -> str:
        """A guest path for a Windows path (``C:\\Windows\\...`` or ``/Windows/...``), resolving case like
        Windows does. Components that do not exist yet keep the given case."""
        text = path.replace("\\", "/")
        if re.match(r"^[A-Za-z]:", text):
            text = text[2:]
        if not text.startswith("/"):
            text = "/" + text
        return self._resolve_case(posixpath.normpath(text))

    def _resolve_case(self, path: str) -> str:
        """case_sensitive_path accepts a missing last component only: resolve the existing prefix, keep the rest."""
        try:
            return self.g.case_sensitive_path(path)
        except RuntimeError:
            parent, name = posixpath.split(path)
            if parent == path:
                raise GuestError(f"cannot resolve Windows path {path}") from None
            return posixpath.join(self._resolve_case(parent), name)

    def exists(self, path: str) -> bool:
        return self.g.exists(self.win_path(path))

    def read_file(self, path: str) -> bytes:
        return self.g.read_file(self.win_path(path))

    def unmount_all(self) -> None:
        """Unmount every filesystem (a read-only Windows mount too), e.g. before mounting another root."""
        self.g.umount_all()

    def sync(self) -> None:
        if self._mounted_rw:
            self.g.sync()
