"""Disk images through qemu-img: describe, check, measure, compare, convert, create differencing children, and
stream a raw disk into a VHDX, VHD or VMDK container.

The stack runs one way, each module importing only the ones above it in this list:

* ``formats``    format names (user-facing, qemu-img's, labels) and the subformats ce writes; no I/O
* ``headers``    container headers read by hand: VHD footer and dynamic header, VHDX regions and metadata, VMDK
* ``extents``    local files and block devices: kind, size, reads at an offset, sparse-file extents and blocks
* ``chains``     the other files an image's header makes qemu open (backing, data file, VMDK extents), and the policy
* ``qemuimg``    the qemu-img runner: sh calls, failures with qemu-img's reason, progress, cancel
* ``probe``      what a disk is (``info``, ``check``, ``measure``, ``compare``, ``remote_info``) and refusals
* ``create``     new images (empty, overlay, differencing child), written under a partial name and read back
* ``layouts``    where each byte of a raw disk goes inside a container: the streamed export and ``convert``
* ``conversion`` ``convert`` to a new image and ``write_onto`` an existing disk
* ``differencing`` VHDX and VHD differencing children written by ce (qemu-img can neither write nor read them) from
  the changed extents of a merged disk, to any ``write_at`` sink; the parent is only read (its headers)

qemu-img 7.2 facts the stack relies on (measured here; tests/unit/test_disks.py pins them):

* Probing reports a *fixed* VHD as ``raw`` (its only footer is at the end), with the footer counted in the size.
* ``info`` opens a truncated qcow2 or VMDK without complaint; only ``check`` notices, so ``info`` runs it too.
* The vpc and vhdx drivers ignore differencing (parent) links: a differencing VHD reads as if its parent were
  zeros, and neither format can be created with a backing file.
* ``measure`` supports only qcow2 and raw outputs; ``check`` exits 63 for formats without checks (raw, vpc).

The names below are what callers use (``from ce import disks``; ``disks.convert(...)``). Those of ``conversion``,
``create`` and ``differencing`` are imported when first used: a command that only describes or hashes a disk does
not load the writers (a tenth of ``ce hash``'s start-up).
"""
import importlib

from ..errors import (AzureVhdInvalid, ChildDiskFailed, ConversionFailed, DestinationExists, DiskError, DiskNotFound,
                      DiskTooSmall, DiskUnreadable, EmptyDisk, LayoutError, OutputDirMissing, QemuImgMissing,
                      UnsupportedFormat)
from .extents import byte_size, file_blocks
from .formats import DISK_FORMATS, FORMAT_LABELS, SUBFORMATS, choose_subformat, qemu_format
from .headers import header_facts, vhdx_metadata_items
from .probe import (DiskInfo, check, compare, info, is_raw_target, measure, probe_format, refuse_differencing,
                    remote_info, verify_azure_vhd)
from .qemuimg import CONVERT_FLAGS, CheckResult, Measurement, is_canceled, stop_if_canceled

__all__ = [
    "AzureVhdInvalid", "ChildDiskFailed", "ConversionFailed", "DestinationExists", "DiskError", "DiskNotFound",
    "DiskTooSmall", "DiskUnreadable", "EmptyDisk", "LayoutError", "OutputDirMissing", "QemuImgMissing",
    "UnsupportedFormat",
    "convert", "write_onto", "create_child", "create_empty", "create_overlay", "require_destination",
    "ChildSummary", "FileSink", "ParentFacts", "parent_facts", "write_child",
    "byte_size", "file_blocks", "DISK_FORMATS", "FORMAT_LABELS", "SUBFORMATS", "choose_subformat", "qemu_format",
    "header_facts", "vhdx_metadata_items", "DiskInfo", "check", "compare", "info", "is_raw_target", "measure",
    "probe_format", "refuse_differencing", "remote_info", "verify_azure_vhd", "CONVERT_FLAGS", "CheckResult",
    "Measurement", "is_canceled", "stop_if_canceled",
]

_ON_FIRST_USE = {
    "convert": "conversion", "write_onto": "conversion",
    "create_child": "create", "create_empty": "create", "create_overlay": "create", "require_destination": "create",
    "ChildSummary": "differencing", "FileSink": "differencing", "ParentFacts": "differencing",
    "parent_facts": "differencing", "write_child": "differencing",
}


def __getattr__(name: str):
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_ON_FIRST_USE[name]}"), name)
    globals()[name] = value
    return value
