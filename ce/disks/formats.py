"""Disk format names: the user-facing ones, qemu-img's, the labels people read, and the subformats ce writes.

The lowest layer of ce.disks: names only, no I/O.
"""
from __future__ import annotations

from ..errors import UnsupportedFormat

DISK_FORMATS = {"raw": "raw", "qcow2": "qcow2", "vhd": "vpc", "vhdx": "vhdx", "vmdk": "vmdk"}
FORMAT_LABELS = {"raw": "raw", "qcow2": "qcow2", "vpc": "VHD", "vhdx": "VHDX", "vmdk": "VMDK"}
SUBFORMATS = {                               # the first one is the default
    "vhdx": ("dynamic", "fixed"),
    "vpc": ("dynamic", "fixed"),
    "vmdk": ("monolithicSparse", "streamOptimized"),
}
CHECKABLE = {"qcow2", "vhdx", "vmdk"}        # formats qemu-img check knows (it exits 63 for raw and vpc)
MEASURABLE = {"qcow2", "raw"}                # output formats qemu-img measure knows


def qemu_format(name: str) -> str:
    """The qemu-img name for a user-facing format name ("vhd" -> "vpc"); qemu names pass through."""
    key = name.lower()
    if key in DISK_FORMATS:
        return DISK_FORMATS[key]
    if key in DISK_FORMATS.values():
        return key
    raise UnsupportedFormat(f"unknown disk format {name!r}: use one of {', '.join(DISK_FORMATS)}")


def choose_subformat(fmt: str, subformat: str | None, azure_fixed: bool = False) -> str | None:
    """The subformat to write ``fmt`` (a qemu-img name) in: ``subformat`` if the format has it, else its default;
    ``azure_fixed`` asks for a fixed VHD. Refuses a subformat the format does not have."""
    if azure_fixed:
        if fmt != "vpc" or subformat not in (None, "fixed"):
            raise UnsupportedFormat("azure_fixed output must be a fixed VHD (format vhd, subformat fixed)")
        return "fixed"
    choices = SUBFORMATS.get(fmt, ())
    if subformat is None:
        return choices[0] if choices else None
    subformat = {c.lower(): c for c in choices}.get(subformat.lower(), subformat)      # streamoptimized too
    if subformat not in choices:
        allowed = ", ".join(choices) or "none"
        raise UnsupportedFormat(f"{FORMAT_LABELS[fmt]} has no subformat {subformat!r} (choose: {allowed})")
    return subformat


def create_options(fmt: str, subformat: str | None) -> str | None:
    """qemu-img create's ``-o`` for a new ``fmt`` image of ``subformat``."""
    if fmt == "vpc":
        return f"subformat={subformat},force_size=on"     # without force_size qemu rounds to CHS geometry
    return f"subformat={subformat}" if subformat else None
