"""One libguestfs session per step: launch, find the Windows root, mount it, address Windows paths.

Launching the appliance is the dominant cost (13-25 s under TCG), so a step opens one ``Guest`` and does all its
work through it. Read-only sessions add the drives read-only (libguestfs puts a throwaway overlay in front), so
inspect and dry runs can never change the input.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import guestfs

from .errors import (ApplianceError, BitLockerVolume, EmptyDisk, GuestError, GuestTimeout,
                     HibernatedVolume, MultipleWindowsRoots, NotWindows, UncleanVolume)

log = logging.getLogger(__name__)

ACCEL_ENV = "CE_GUEST_ACCEL"          # auto (default) | kvm | tcg
LAUNCH_TIMEOUT_ENV = "CE_GUEST_LAUNCH_TIMEOUT"
DEFAULT_LAUNCH_TIMEOUT = 600.0        # TCG on a busy 2-core box can take minutes; KVM takes seconds
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ce"
BITLOCKER_OEM_ID = b"-FVE-FS-"
NTFS_PROBE_HIBERNATED, NTFS_PROBE_UNCLEAN = 14, 15
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


class BlankDisk(EmptyDisk):
    code = "disk_blank"


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
    bitlocker: bool = False
    ntfs_state: str = ""              # "clean" | "hibernated" | "unclean" for NTFS

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in ("", None) or k in ("device", "type")}


@dataclass
class WindowsRoot:
    device: str
    product_name: str
    major: int
    minor: int
    arch: str
    hostname: str
    systemroot: str
    current_control_set: str
    product_variant: str
    filesystems: list[Filesystem] = field(default_factory=list)


# ---------------------------------------------------------------- acceleration

def kvm_probe() -> tuple[bool, str]:
    """Boot the host kernel under KVM until it panics (no root fs). Broken nested KVM aborts or hangs instead."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        return False, "no kernel in /boot to probe KVM with"
    cmd = ["qemu-system-x86_64", "-machine", "accel=kvm", "-cpu", "host", "-m", "256", "-nodefaults",
           "-display", "none", "-no-reboot", "-serial", "null", "-kernel", str(kernels[-1]),
           "-append", "panic=-1 console=ttyS0"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, "a KVM test boot hung"
    except FileNotFoundError:
        return False, "qemu-system-x86_64 is not installed"
    if proc.returncode != 0:
        return False, f"a KVM test boot failed: {proc.stderr.decode(errors='replace').strip()[-200:]}"
    return True, "KVM works"


def choose_accel() -> str:
    """``kvm`` or ``tcg``: forced by $CE_GUEST_ACCEL, else probed once per machine and cached."""
    forced = os.environ.get(ACCEL_ENV, "auto").lower()
    if forced in ("kvm", "tcg"):
        return forced
    if forced != "auto":
        raise GuestError(f"{ACCEL_ENV} must be auto, kvm or tcg, not {forced!r}")
    cache = CACHE_DIR / "accel.json"
    fingerprint = f"{os.uname().release}|{sorted(Path('/boot').glob('vmlinuz-*'))}"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("fingerprint") == fingerprint:
            return cached["accel"]
    except (OSError, ValueError, KeyError):
        pass
    ok, why = kvm_probe()
    accel = "kvm" if ok else "tcg"
    log.info("guest acceleration: %s (%s)", accel, why)
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"fingerprint": fingerprint, "accel": accel, "reason": why}))
    except OSError:
        pass
    return accel


# ---------------------------------------------------------------- watchdog

def _qemu_children() -> set[int]:
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
        except OSError:
            continue
        comm, _, tail = rest.rpartition(") ")
        if comm.startswith("(qemu") and int(tail.split()[1]) == os.getpid():
            pids.add(int(pid))
    return pids


@contextmanager
def _deadline(seconds: float, what: str, known_before: set[int]):
    """Kill the appliance if ``what`` takes longer than ``seconds``; the blocked libguestfs call then fails."""
    fired = threading.Event()

    def kill():
        fired.set()
        for pid in _qemu_children() - known_before:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    timer = threading.Timer(seconds, kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    except RuntimeError as exc:
        if fired.is_set():
            raise GuestTimeout(f"{what} did not finish within {seconds:.0f} s and was stopped; "
                               f"raise the step timeout or check the host's load") from exc
        raise
    finally:
        timer.cancel()


# ---------------------------------------------------------------- session

class Guest:
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

    def __enter__(self) -> "Guest":
        self.launch()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def launch(self) -> None:
        g = guestfs.GuestFS(python_return_dict=True)
        g.set_backend(os.environ.get("LIBGUESTFS_BACKEND", "direct"))
        self.accel = choose_accel()
        if self.accel == "tcg":
            g.set_backend_settings(["force_tcg"])
        if self.memsize:
            g.set_memsize(self.memsize)
        for d in self.drives:
            g.add_drive_opts(d.path, format=d.format, readonly=d.readonly)
        before = _qemu_children()
        started = time.monotonic()
        try:
            with _deadline(self.launch_timeout, "starting the libguestfs appliance", before):
                g.launch()
        except RuntimeError as exc:
            g.close()
            raise ApplianceError(f"could not start the libguestfs appliance ({self.accel}): {exc}; "
                                 f"run `libguestfs-test-tool` for details, or set {ACCEL_ENV}=tcg") from exc
        self.launch_seconds = time.monotonic() - started
        self.g = g
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
        with _deadline(seconds, what, set()):
            yield

    # ------------------------------------------------------------ discovery

    def devices(self) -> list[str]:
        return self.g.list_devices()

    def partition_table(self, device: str) -> str:
        """``gpt``, ``mbr`` (libguestfs says msdos) or ``none``."""
        try:
            kind = self.g.part_get_parttype(device)
        except RuntimeError:
            return "none"
        return "mbr" if kind == "msdos" else kind

    def on_device(self, dev: str, device: str | None) -> bool:
        """Whether partition or whole device ``dev`` belongs to ``device`` (None = any drive)."""
        return device is None or dev == device or (not self.g.is_whole_device(dev)
                                                   and self.g.part_to_dev(dev) == device)

    def filesystems(self, device: str | None = None) -> list[Filesystem]:
        g = self.g
        result = []
        for dev, fstype in g.list_filesystems().items():
            if not self.on_device(dev, device):
                continue
            fs = Filesystem(device=dev, type=fstype)
            fs.bitlocker = self._has_bitlocker_id(dev)
            if fs.bitlocker:
                fs.type = "BitLocker"
            self._describe_partition(fs)
            if fstype == "ntfs":
                fs.ntfs_state = self._ntfs_state(dev)
            if fstype not in ("unknown", "swap") and not fs.bitlocker:
                fs.label = self._quiet(g.vfs_label, dev)
                fs.uuid = self._quiet(g.vfs_uuid, dev)
            result.append(fs)
        return result

    def _has_bitlocker_id(self, dev: str) -> bool:
        return self._quiet(self.g.pread_device, dev, 8, 3, default=b"") == BITLOCKER_OEM_ID

    def _describe_partition(self, fs: Filesystem) -> None:
        g = self.g
        fs.size = self._quiet(g.blockdev_getsize64, fs.device, default=0)
        if g.is_whole_device(fs.device):
            return
        parent = g.part_to_dev(fs.device)
        fs.partition = g.part_to_partnum(fs.device)
        if self.partition_table(parent) == "gpt":
            fs.partition_type = self._quiet(g.part_get_gpt_type, parent, fs.partition).upper()
        else:
            fs.partition_type = "0x%02x" % self._quiet(g.part_get_mbr_id, parent, fs.partition, default=0)

    def _ntfs_state(self, dev: str) -> str:
        code = self._quiet(self.g.ntfs_3g_probe, True, dev, default=0)
        return {0: "clean", NTFS_PROBE_HIBERNATED: "hibernated", NTFS_PROBE_UNCLEAN: "unclean"}.get(code,
                                                                                                      f"probe-{code}")

    @staticmethod
    def _quiet(fn, *args, default=""):
        try:
            return fn(*args)
        except RuntimeError:
            return default

    def os_roots(self) -> list[str]:
        try:
            return self.g.inspect_os()
        except RuntimeError as exc:
            raise GuestError(f"libguestfs inspection failed: {exc}") from exc

    def windows_root(self, root: str | None = None, device: str | None = None) -> WindowsRoot:
        """The single Windows installation on ``device`` (default: all drives), or a clear error saying why
        there is none."""
        roots = [r for r in self.os_roots() if self.on_device(r, device)]
        windows = [r for r in roots if self.g.inspect_get_type(r) == "windows"]
        if root:
            if root not in windows:
                raise NotWindows(f"{root} is not a Windows root; Windows roots found: {', '.join(windows) or 'none'}")
            windows = [root]
        if len(windows) > 1:
            described = "; ".join(f"{r} ({self.g.inspect_get_product_name(r)}, "
                                  f"{self.g.inspect_get_hostname(r)})" for r in windows)
            raise MultipleWindowsRoots(f"the disk holds {len(windows)} Windows installations: {described}; "
                                       f"choose one with --root DEVICE")
        if not windows:
            self._explain_no_windows(roots, device)
        return self._describe_root(windows[0])

    def _explain_no_windows(self, roots: list[str], device: str | None) -> None:
        filesystems = self.filesystems(device)
        if any(fs.bitlocker for fs in filesystems):
            locked = ", ".join(fs.device for fs in filesystems if fs.bitlocker)
            raise BitLockerVolume(f"{locked} is BitLocker-encrypted and cannot be read offline; decrypt the volume "
                                  f"(manage-bde -off C:) or suspend protection before exporting the image")
        if roots:
            other = ", ".join(f"{self.g.inspect_get_type(r)} {self.g.inspect_get_distro(r)} "
                              f"{self.g.inspect_get_major_version(r)} on {r}" for r in roots)
            raise NotWindows(f"no Windows installation found; the disk holds {other}")
        if not any(fs.type not in ("unknown", "swap") for fs in filesystems):
            if all(self.partition_table(d) == "none" for d in self.devices() if self.on_device(d, device)):
                raise BlankDisk("the disk is blank: no partition table and no filesystem; attach the image's "
                                "system disk, not a new or wiped one")
            raise NotWindows("the disk has partitions but no filesystem libguestfs can read")
        kinds = ", ".join(f"{fs.device} ({fs.type})" for fs in filesystems)
        raise NotWindows(f"no operating system found on the disk's filesystems: {kinds}")

    def _describe_root(self, root: str) -> WindowsRoot:
        g = self.g
        return WindowsRoot(device=root, product_name=g.inspect_get_product_name(root),
                           major=g.inspect_get_major_version(root), minor=g.inspect_get_minor_version(root),
                           arch=g.inspect_get_arch(root), hostname=g.inspect_get_hostname(root),
                           systemroot=g.inspect_get_windows_systemroot(root),
                           current_control_set=g.inspect_get_windows_current_control_set(root),
                           product_variant=g.inspect_get_product_variant(root))

    # ------------------------------------------------------------ mounting

    def mount_windows(self, root: WindowsRoot | str, *, readonly: bool = True) -> None:
        """Mount the Windows volume at /. Refuses a write mount of a hibernated or dirty NTFS."""
        device = root.device if isinstance(root, WindowsRoot) else root
        g = self.g
        if readonly:
            g.mount_ro(device, "/")
            return
        state = self._ntfs_state(device) if g.vfs_type(device) == "ntfs" else "clean"
        if state == "hibernated":
            raise HibernatedVolume(f"{device} is hibernated (Fast Startup or hibernation): writing would lose the "
                                   f"saved session; boot Windows and shut down fully (shutdown /s /t 0) first")
        if state == "unclean":
            raise UncleanVolume(f"{device} was not unmounted cleanly; boot Windows once (or run chkdsk) and shut "
                                f"down normally before preparing the image")
        g.mount(device, "/")
        self._mounted_rw = True

    def win_path(self, path: str) -> str:
        """A guest path for a Windows path (``C:\\Windows\\...`` or ``/Windows/...``), resolving case like
        Windows does. Components that do not exist yet keep the given case."""
        text = path.replace("\\", "/")
        if re.match(r"^[A-Za-z]:", text):
            text = text[2:]
        if not text.startswith("/"):
            text = "/" + text
        try:
            return self.g.case_sensitive_path(text)
        except RuntimeError as exc:
            raise GuestError(f"cannot resolve Windows path {path}: {exc}") from exc

    def exists(self, path: str) -> bool:
        return self.g.exists(self.win_path(path))

    def read_file(self, path: str) -> bytes:
        return self.g.read_file(self.win_path(path))

    def sync(self) -> None:
        if self._mounted_rw:
            self.g.sync()

