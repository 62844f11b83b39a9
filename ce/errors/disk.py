"""Disk errors: attached disks, image files and their containers, qemu-img, local scratch space."""
from __future__ import annotations

from .base import CeError


class DiskError(CeError):
    code = "disk_error"
    action = "check the disk named in the message (attached, readable, the format it claims)"


class DiskNotFound(DiskError):
    code = "disk_not_found"
    action = "attach the disk (or fix the path) and submit the step again"


class DiskUnreadable(DiskError):
    """The file is not a usable disk image (truncated, corrupt header, wrong format)."""
    code = "disk_unreadable"
    action = "the image is truncated or corrupt: copy it again from its source"


class EmptyDisk(DiskError):
    code = "disk_empty"
    action = "the disk holds no data: attach the disk that holds the image"
