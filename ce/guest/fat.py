"""A new FAT32 filesystem (an EFI system partition) on a partition of the attached disk, made the way Windows
formats one (one sector per cluster: 512 bytes on a 100 MiB ESP, 4 KiB on a 4Kn disk's 260 MiB one), without
writing the whole partition.

libguestfs's ``mkfs`` cannot ask mkfs.fat for FAT32 (it picks FAT16 below 512 MiB), and the UEFI specification and
Windows want FAT32 on a fixed disk's ESP. So mkfs.fat (dosfstools) formats a sparse scratch file of the partition's
size on the host, and only the filesystem's metadata -- boot sectors, FSInfo, both FATs and the root directory's
cluster -- is written into the partition. The data area is not touched: a fresh FAT marks every cluster free, so
whatever an old filesystem left there is unreachable, and on space past a parent disk's end it stays unallocated in
a differencing child instead of becoming megabytes of written zeros.
"""
from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from pathlib import Path

from ..errors import GuestError

WRITE_CHUNK = 1 << 20


def metadata_length(boot_sector: bytes) -> int:
    """Bytes from the volume's start through the root directory's first cluster (FAT32 BPB fields)."""
    bytes_per_sector, per_cluster, reserved, fats = struct.unpack_from("<HBHB", boot_sector, 11)
    fat_sectors = struct.unpack_from("<I", boot_sector, 36)[0]
    if boot_sector[82:87] != b"FAT32" or not bytes_per_sector or not fat_sectors:
        raise GuestError("mkfs.fat did not make a FAT32 filesystem")
    return (reserved + fats * fat_sectors + per_cluster) * bytes_per_sector


def make_image(path: Path, size: int, *, label: str, sector_size: int, hidden_sectors: int) -> int:
    """Format a sparse file of ``size`` bytes as FAT32; returns how many leading bytes hold its metadata."""
    with open(path, "wb") as f:
        f.truncate(size)
    command = ["mkfs.fat", "-F", "32", "-s", "1", "-S", str(sector_size), "-h", str(hidden_sectors),
               "-n", label, os.fspath(path)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise GuestError(f"mkfs.fat could not format {size} bytes as FAT32: {done.stderr.strip()[-300:]}")
    with open(path, "rb") as f:
        return metadata_length(f.read(512))


def format_fat32(guest, device: str, *, label: str) -> None:
    """Put a new, empty FAT32 filesystem labelled ``label`` on partition ``device``; nothing of it is mounted."""
    g = guest.g
    size, sector = g.blockdev_getsize64(device), g.blockdev_getss(device)
    number = g.part_to_partnum(device)
    start_sector = next(p["part_start"] for p in g.part_list(g.part_to_dev(device)) if p["part_num"] == number) \
        // sector
    with tempfile.TemporaryDirectory(prefix="ce-fat-") as tmp:
        image = Path(tmp) / "fat.img"
        length = make_image(image, size, label=label, sector_size=sector, hidden_sectors=start_sector)
        with open(image, "rb") as f:
            for offset in range(0, length, WRITE_CHUNK):
                data = f.read(min(WRITE_CHUNK, length - offset))
                done = 0
                while done < len(data):
                    done += g.pwrite_device(device, data[done:], offset + done)
    g.sync()
    found = g.vfs_type(device)
    if found != "vfat" or g.vfs_label(device) != label:
        raise GuestError(f"{device} reads back as {found!r} labelled {g.vfs_label(device)!r} after formatting, "
                         f"not vfat {label!r}")
