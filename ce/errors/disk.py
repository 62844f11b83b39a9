"""Disk errors: attached disks, image files and their containers, qemu-img, local scratch space (ce.disks,
ce.hashing, ce.nbdexport, ce.staging)."""
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


class UnsupportedFormat(DiskError):
    code = "disk_format_unsupported"
    action = "give an image ce handles (raw, qcow2, VHD, VHDX, VMDK; one image, no parent) or a format it can write"


class DestinationExists(DiskError):
    code = "disk_exists"
    status = 409
    action = "remove the existing file, choose another name, or ask to overwrite it"


class OutputDirMissing(DiskError):
    code = "output_dir_missing"
    action = "create the output directory (or fix the path) and submit the step again"


class DiskTooSmall(DiskError):
    code = "disk_too_small"
    action = "attach a larger disk (or ask for less output) and submit the step again"


class ConversionFailed(DiskError):
    code = "disk_conversion_failed"
    status = 500
    action = ("qemu-img failed to write the image (nothing is kept under the final name): retry; collect "
              "diagnostics if it recurs")


class ChildDiskFailed(DiskError):
    code = "disk_child_failed"
    action = "create the child as qcow2 (qemu-img cannot create VHD or VHDX children) over a readable parent"


class AzureVhdInvalid(DiskError):
    code = "vhd_not_azure_ready"
    action = "convert the disk with azureFixed (a fixed VHD of a whole number of MiB) and upload that file"


class LayoutError(DiskError):
    """The streamed export found a container (or a source) that is not laid out as it expects."""
    code = "container_layout_invalid"
    status = 500
    action = "retry; if it recurs collect diagnostics (the qemu-img version made an empty container ce cannot fill)"


class QemuImgMissing(DiskError):
    code = "qemu_img_missing"
    status = 500
    action = "install the qemu-utils package on the CE VM (its image is incomplete)"


class ScratchSpaceShort(CeError):
    code = "local_space_short"
    status = 507
    action = "set CE_SCRATCH to a directory on a larger local disk (or free space there) and submit the step again"


class DiskChainRefused(DiskError):
    """The image's header names another file or a protocol (a backing file, an external data file, VMDK extents or
    parent) that is not an attached disk: qemu would read it as part of the disk."""
    code = "disk_chain_refused"
    action = ("attach every file of the image's chain as a disk of the CE, or merge the chain into one image "
              "(qemu-img convert) and attach that")
