"""Build the sample disks described by images/specs/*.toml into images/build/ (cached).

All disks that need building are laid out in ONE libguestfs appliance (a launch costs 13-25 s here): real
GPT/MBR partition tables, real NTFS/FAT/ext4 filesystems, hives written with hivex through ce.registry. Defects for
the bad-input samples (BitLocker boot sector, hibernation file, corrupt or dirty hive, truncation) are injected the
way they occur in the field. Content is deterministic (partition GUIDs derive from the spec name); NTFS serials
and timestamps are not, so caching is by spec + builder source hash, not by image bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import sh

from ce import disks, ntfs
from ce.guest import ESP_GUID, Drive, Guest
from ce.registry import Hive, RegType, create_empty_hive, header_checksum
from ce.windows.bcd.store import build_uefi_store

from . import bcd
from .content import GuestContent, pe_stub, windows_content
from .spec import BUILD_DIR, Spec, cache_key, load_all

log = logging.getLogger(__name__)
MIB = 1 << 20
FIXED_MTIME = 1_700_000_000
SECTOR = 512
MSR_GUID = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
BASIC_DATA_GUID = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
LINUX_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
HIVE_ROOT_NAMES = {"SYSTEM": "CMI-CreateHive{2A7FB991-7BBE-4F9D-B91E-7CB51D4737F5}",
                   "SOFTWARE": "CMI-CreateHive{199DAFC2-6F16-4946-BF90-5A3FC3A60902}",
                   "SECURITY": "CMI-CreateHive{B2BF0DD3-AC06-4E2C-A3BC-1BE6DF73B1A0}"}


@dataclass
class Partition:
    role: str                 # esp | msr | boot | system | system2 | linux
    fstype: str | None
    size_mib: int | None      # None = the rest of the disk
    gpt_type: str = BASIC_DATA_GUID
    label: str = ""
    start: int = 0            # byte offset, filled in when laid out
    guid: str = ""            # GPT unique partition GUID, filled in when laid out


@dataclass
class Job:
    spec: Spec
    raw: Path
    partitions: list[Partition] = field(default_factory=list)
    volumes: dict[str, dict[str, bytes]] = field(default_factory=dict)   # role -> {path: bytes}
    disk_signature: int = 0   # MBR: the u32 at offset 440, filled in when laid out
    disk_guid: str = ""       # GPT: the header's disk GUID, filled in when laid out


def build(names: list[str] | None = None, *, force: bool = False, say=print) -> list[Spec]:
    specs = load_all()
    unknown = set(names or []) - set(specs)
    if unknown:
        raise SystemExit(f"unknown sample image(s): {', '.join(sorted(unknown))}; known: {', '.join(specs)}")
    chosen = [specs[n] for n in names] if names else list(specs.values())
    stale = [s for s in chosen if force or not is_fresh(s)]
    if not stale:
        say(f"sample images up to date in {BUILD_DIR}")
        return chosen
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD_DIR, prefix=".work-") as tmp:
        jobs = [plan_job(spec, Path(tmp)) for spec in stale]
        in_guest = [job for job in jobs if job.partitions]
        if in_guest:
            say(f"laying out {len(in_guest)} disk(s) in one libguestfs appliance ...")
            populate(in_guest)
        for job in jobs:
            finish(job)
            say(f"built {job.spec.path.name}: {job.spec.description}")
    return chosen


def is_fresh(spec: Spec) -> bool:
    stamp = stamp_path(spec)
    return spec.path.exists() and stamp.exists() and json.loads(stamp.read_text()).get("key") == cache_key(spec)


def stamp_path(spec: Spec) -> Path:
    return BUILD_DIR / f"{spec.name}.stamp"


# ---------------------------------------------------------------- planning

def plan_job(spec: Spec, tmp: Path) -> Job:
    job = Job(spec=spec, raw=tmp / f"{spec.name}.raw")
    size = spec.size_mib * MIB * (2 if spec.second_root else 1)
    with open(job.raw, "wb") as f:
        f.truncate(size)
    if spec.kind == "blank":
        return job
    job.partitions = partition_plan(spec)
    partition(job)
    if spec.kind == "linux":
        job.volumes = {"esp": {"EFI/debian/grubx64.efi": pe_stub("grub")}, "linux": linux_files()}
        return job
    content = windows_content(spec)
    content.registry["SYSTEM"] += mounted_devices(job, "system")
    job.volumes["system"] = system_volume(spec, content, tmp / spec.name / "system")
    boot_files = boot_volume(job, content, tmp / spec.name)
    if spec.firmware == "uefi":
        job.volumes["esp"] = boot_files
    elif has_role(job, "boot"):
        job.volumes["boot"] = boot_files
    else:
        job.volumes["system"].update(boot_files)          # no System Reserved: C: holds bootmgr and \Boot
    if spec.second_root:
        second = windows_content(spec, hostname=spec.windows["hostname"][:-1] + "B")
        second.registry["SYSTEM"] += mounted_devices(job, "system2")
        job.volumes["system2"] = system_volume(spec, second, tmp / spec.name / "system2")
    return job


def partition_plan(spec: Spec) -> list[Partition]:
    if spec.kind == "linux":
        return [Partition("esp", "vfat", 32, ESP_GUID, "EFI"), Partition("linux", "ext4", None, LINUX_GUID, "root")]
    if spec.firmware == "bios":
        windows = Partition("system", "ntfs", None)
        if not spec.system_reserved_mib:
            return [windows]
        return [Partition("boot", "ntfs", spec.system_reserved_mib, label="System Reserved"), windows]
    parts = [Partition("esp", "vfat", 32, ESP_GUID, "SYSTEM"), Partition("msr", None, 16, MSR_GUID)]
    if spec.second_root:
        parts.append(Partition("system", "ntfs", spec.size_mib - 48, label="Windows"))
    parts.append(Partition("system2" if spec.second_root else "system", "ntfs", None, label="Windows"))
    return parts


def system_volume(spec: Spec, content: GuestContent, workdir: Path) -> dict[str, bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    files = dict(content.files)
    for hive_name, values in content.registry.items():
        data = make_hive(workdir / hive_name, HIVE_ROOT_NAMES[hive_name], values)
        if hive_name == spec.corrupt_hive:
            data = corrupt_hive(data)
        if hive_name == spec.dirty_hive:
            data = make_dirty(data)
            files[f"Windows/System32/config/{hive_name}.LOG1"] = b"DIRT" + bytes(508)
        files[f"Windows/System32/config/{hive_name}"] = data
    if spec.hibernated:
        files["hiberfil.sys"] = b"HIBR" + bytes(4092)
    files["Windows/System32/config/BCD-Template"] = make_hive(workdir / "BCD-Template", bcd.ROOT_NAME,
                                                               bcd.template_values())
    return files


def boot_volume(job: Job, content: GuestContent, workdir: Path) -> dict[str, bytes]:
    """The boot partition's files with the BCD bcdboot would write there for the (first) Windows partition: on the
    ESP from the image's BCD-Template (``workdir/system``), on a BIOS boot volume the sample store of images.bcd."""
    windows = role_partition(job, "system")
    loader, description = stable_guid(job.spec.name, "osloader"), loader_description(job.spec.windows)
    if job.spec.firmware == "uefi":
        build_uefi_store(workdir / "system" / "BCD-Template", workdir / "BCD",
                         esp_partition_guid=role_partition(job, "esp").guid, windows_partition_guid=windows.guid,
                         disk_guid=job.disk_guid, loader_guid=loader, description=description)
        return {**content.boot_files, "EFI/Microsoft/Boot/BCD": (workdir / "BCD").read_bytes()}
    boot = role_partition(job, "boot") if has_role(job, "boot") else windows
    values = bcd.bios_store_values(job.disk_signature, windows.start, boot.start, loader_guid=loader,
                                   description=description)
    return {**content.boot_files, "Boot/BCD": make_hive(workdir / "BCD", bcd.ROOT_NAME, values)}


def loader_description(win: dict) -> str:
    """The OS loader's name in the boot menu as Windows Setup writes it."""
    if win["installation_type"].startswith("Server"):
        return "Windows Server"
    return "Windows 11" if win["build"] >= 22000 else "Windows 10"


def mounted_devices(job: Job, windows_role: str) -> list[tuple[str, str, RegType, bytes]]:
    """SYSTEM\\MountedDevices as Windows keeps it: ``\\DosDevices\\C:`` for this Windows' own partition and a
    ``\\??\\Volume{GUID}`` for every volume (System Reserved and the ESP get no letter), each naming its partition
    the way the partition manager does (``device_id``)."""
    windows = role_partition(job, windows_role)
    values = [("MountedDevices", r"\DosDevices\C:", RegType.BINARY, device_id(job, windows))]
    for part in job.partitions:
        if part.fstype:
            name = rf"\??\Volume{{{stable_guid(job.spec.name, 'volume', part.role).lower()}}}"
            values.append(("MountedDevices", name, RegType.BINARY, device_id(job, part)))
    return values


def device_id(job: Job, part: Partition) -> bytes:
    """MBR: the disk signature (u32) and the partition's byte offset (u64), 12 bytes; GPT: ``DMIO:ID:`` and the
    partition's unique GUID in its on-disk (bytes_le) order, 24 bytes."""
    if job.spec.partition_table == "gpt":
        return b"DMIO:ID:" + uuid.UUID(part.guid).bytes_le
    return struct.pack("<IQ", job.disk_signature, part.start)


def role_partition(job: Job, role: str) -> Partition:
    return next(p for p in job.partitions if p.role == role)


def has_role(job: Job, role: str) -> bool:
    return any(p.role == role for p in job.partitions)


def linux_files() -> dict[str, bytes]:
    return {"etc/os-release": b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                              b'VERSION_ID="12"\nVERSION="12 (bookworm)"\nID=debian\n',
            "etc/debian_version": b"12.11\n", "etc/hostname": b"linux-appliance\n",
            "etc/fstab": b"LABEL=root / ext4 defaults 0 1\n", "bin/.keep": b"", "usr/bin/.keep": b""}


def make_hive(path: Path, root_name: str, values) -> bytes:
    create_empty_hive(path, root_name=root_name)
    with Hive.open(path, write=True) as hive:
        for key, name, rtype, data in values:
            hive.set(key, name, rtype, data)
        hive.commit(path)
    return path.read_bytes()


def corrupt_hive(data: bytes) -> bytes:
    """Overwrite the first hive bin's header and cells: what a torn write or disk error leaves behind."""
    junk = hashlib.sha256(b"corrupt").digest() * 64
    return data[:0x1000] + junk[:0x800] + data[0x1800:]


def make_dirty(data: bytes) -> bytes:
    """Bump the primary sequence number (and fix the checksum): a hive whose last write was not flushed."""
    head = bytearray(data[:0x1000])
    primary = struct.unpack_from("<I", head, 4)[0]
    struct.pack_into("<I", head, 4, primary + 1)
    struct.pack_into("<I", head, 508, header_checksum(bytes(head)))
    return bytes(head) + data[0x1000:]


# ---------------------------------------------------------------- layout in the appliance

def populate(jobs: list[Job]) -> None:
    drives = [Drive(str(job.raw), "raw", readonly=False) for job in jobs]
    with Guest(drives) as guest:
        for job, device in zip(jobs, guest.devices()):
            started = time.monotonic()
            lay_out(guest.g, device, job)
            log.info("laid out %s in %.1f s", job.spec.name, time.monotonic() - started)


def lay_out(g, device: str, job: Job) -> None:
    for n, part in enumerate(job.partitions, 1):
        if part.fstype:
            fill_volume(g, f"{device}{n}", part, job.volumes.get(part.role, {}), job.raw.parent)


def partition(job: Job) -> None:
    """Write the partition table on the host with one sfdisk run (in the appliance it takes ~10 slow calls)."""
    spec = job.spec
    gpt = spec.partition_table == "gpt"
    total = os.path.getsize(job.raw) // SECTOR
    job.disk_signature = 0 if gpt else stable_id(spec.name)
    job.disk_guid = stable_guid(spec.name, "disk") if gpt else ""
    lines = ["label: gpt" if gpt else "label: dos", "unit: sectors",
             f"label-id: {job.disk_guid}" if gpt else f"label-id: 0x{job.disk_signature:08x}"]
    start = MIB // SECTOR
    end = total - (0 if spec.fill_disk else MIB // SECTOR)
    for n, part in enumerate(job.partitions, 1):
        size = (end - start) if part.size_mib is None else part.size_mib * MIB // SECTOR
        part.start = start * SECTOR
        if gpt:
            part.guid = stable_guid(spec.name, part.role)
            lines.append(f"start={start}, size={size}, type={part.gpt_type}, uuid={part.guid}")
        else:
            lines.append(f"start={start}, size={size}, type=7" + (", bootable" if n == 1 else ""))
        start += size
    sh.sfdisk("--quiet", "--no-reread", "--no-tell-kernel", str(job.raw), _in="\n".join(lines) + "\n")


def fill_volume(g, dev: str, part: Partition, files: dict[str, bytes], workdir: Path) -> None:
    g.mkfs(part.fstype, dev, label=part.label) if part.label else g.mkfs(part.fstype, dev)
    if not files:
        return
    g.mount(dev, "/")
    archive = workdir / f"{dev.rsplit('/', 1)[-1]}.tar"
    write_tar(archive, files)
    g.tar_in(str(archive), "/")     # one appliance round trip instead of one per file
    g.umount_all()


def write_tar(path: Path, files: dict[str, bytes]) -> None:
    """A tar of ``files`` with fixed owners and times, directories included, so the layout is reproducible."""
    dirs = sorted({str(parent) for name in files for parent in Path(name).parents if str(parent) != "."})
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, FIXED_MTIME
            tar.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, FIXED_MTIME
            tar.addfile(info, io.BytesIO(data))


def stable_guid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "ce-sample:" + "/".join(parts))).upper()


def stable_id(name: str) -> int:
    return int(stable_guid(name, "mbr")[:8], 16)


# ---------------------------------------------------------------- finishing

def mark_ntfs_dirty(raw: Path, volume_start: int) -> None:
    """Set VOLUME_IS_DIRTY in $Volume (and its $MFTMirr copy), as a crash or a live snapshot leaves it."""
    with open(raw, "r+b") as f:
        def read_at(offset: int, size: int) -> bytes:
            f.seek(volume_start + offset)
            return f.read(size)
        for offset in ntfs.volume_flag_offsets(read_at):
            flags = struct.unpack("<H", read_at(offset, 2))[0]
            f.seek(volume_start + offset)
            f.write(struct.pack("<H", flags | ntfs.VOLUME_IS_DIRTY))


def finish(job: Job) -> None:
    spec = job.spec
    system = next((p for p in job.partitions if p.role == "system"), None)
    if spec.dirty_ntfs:
        mark_ntfs_dirty(job.raw, system.start)
    if spec.bitlocker:
        with open(job.raw, "r+b") as f:
            f.seek(system.start + 3)
            f.write(b"-FVE-FS-")
    final = spec.path
    if spec.format == "raw":
        os.replace(job.raw, final)
    else:
        disks.convert(str(job.raw), str(final), spec.format, src_fmt="raw", overwrite=True)
    if spec.truncate_percent:
        with open(final, "r+b") as f:
            f.truncate(os.path.getsize(final) * spec.truncate_percent // 100)
    stamp_path(spec).write_text(json.dumps({"key": cache_key(spec), "format": spec.format}) + "\n")
