"""New disk images: empty ones, overlays and differencing children, and the rules every output follows.

Outputs are written to ``NAME.partial`` and renamed to ``NAME`` only after they have been read back with the
expected format and size, so a crash, a failure or a cancel never leaves a partial disk at its final name.
"""
from __future__ import annotations

import os
from contextlib import contextmanager, suppress
from dataclasses import replace

from ..errors import ChildDiskFailed, ConversionFailed, DestinationExists, OutputDirMissing
from .chains import made_here
from .formats import FORMAT_LABELS, choose_subformat, create_options, qemu_format
from .probe import DiskInfo, info
from .qemuimg import create as qemu_create


def create_empty(path, fmt: str, size: int, subformat: str | None = None, doing: str | None = None) -> DiskInfo:
    """An empty disk of ``size`` bytes (fixed subformats are sparse files, so this costs no space or time); the
    streamed export fills one in (ce.disks.layouts)."""
    path, fmt = os.fspath(path), qemu_format(fmt)
    subformat = choose_subformat(fmt, subformat)
    options = create_options(fmt, subformat)
    qemu_create(path, fmt, size, *(("-o", options) if options else ()),
                   doing=doing or f"cannot create an empty {FORMAT_LABELS[fmt]} of {size} bytes")
    return verify_output(path, fmt, subformat, size)


def create_overlay(backing: str, backing_fmt: str, path, size: int) -> None:
    """A local qcow2 of ``size`` bytes over ``backing`` (a URI qemu-img opens, such as an NBD export): it reads as
    the backing image and as zeros past its end. Nothing of the backing image is copied."""
    qemu_create(os.fspath(path), "qcow2", size, "-u", "-b", backing, "-F", qemu_format(backing_fmt),
                   doing=f"cannot create an overlay of {size} bytes")
    made_here(path)


def create_child(parent, child, parent_fmt: str | None = None, child_fmt: str = "qcow2", size: int | None = None,
                 *, overwrite: bool = False) -> DiskInfo:
    """Create a differencing disk ``child`` backed by ``parent`` (stored as a path relative to the child).

    qemu-img 7.2 can only create qcow2 (and vmdk-on-vmdk) children: for vhdx and vpc it refuses with
    "Backing file not supported", which is reported as ChildDiskFailed.
    """
    parent, child = os.fspath(parent), os.fspath(child)
    base = info(parent, parent_fmt)
    fmt = qemu_format(child_fmt)
    backing = os.path.relpath(os.path.abspath(parent), os.path.dirname(os.path.abspath(child)))
    require_destination(child, overwrite)
    with partial_output(child, overwrite) as partial:
        qemu_create(partial, fmt, size or None, "-b", backing, "-F", base.format, fails_as=ChildDiskFailed,
                       doing=f"cannot create a {FORMAT_LABELS[fmt]} child of {parent}")
        result = verify_output(partial, fmt, None, size or base.virtual_size)
        if result.backing_file != backing:
            raise ChildDiskFailed(f"{child} was written with backing file {result.backing_file!r}, not {backing!r}")
    return replace(result, path=child)


def verify_output(path: str, fmt: str, subformat: str | None, size: int) -> DiskInfo:
    """Read a written image back: it must have the format, virtual size and subformat it was written with."""
    # Probe rather than pass -f, so a wrong format is noticed; raw is the exception since anything probes as raw.
    result = info(path, "raw" if fmt == "raw" else None)
    problems = []
    if result.format != fmt:
        problems.append(f"format {result.format}, expected {fmt}")
    if result.virtual_size != size:
        problems.append(f"virtual size {result.virtual_size}, expected {size}")
    if subformat and result.subformat != subformat:
        problems.append(f"subformat {result.subformat}, expected {subformat}")
    if problems:
        raise ConversionFailed(f"the {FORMAT_LABELS[fmt]} written for {path} reads back wrong: {'; '.join(problems)}")
    return result


def require_destination(dst: str, overwrite: bool) -> None:
    """Refuse an output path whose directory is missing, or that exists (unless ``overwrite`` and a regular file)."""
    directory = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(directory):
        raise OutputDirMissing(f"cannot write {dst}: directory {directory} does not exist")
    if not os.path.lexists(dst):
        return
    if not overwrite:
        raise DestinationExists(f"{dst} already exists: remove it or ask to overwrite it")
    if not os.path.isfile(dst):
        raise DestinationExists(f"{dst} exists and is not a regular file: refusing to replace it")


@contextmanager
def partial_output(dst: str, overwrite: bool, durable: bool = True):
    """Yield ``dst.partial``; rename it to ``dst`` when the block succeeds, remove it on any failure."""
    partial = dst + ".partial"
    try:
        yield partial
        require_destination(dst, overwrite)
        if durable:
            _fsync(partial)             # qemu-img leaves its output in the page cache: a power loss after the
        os.replace(partial, dst)        # rename could otherwise show a partly written disk at the final name
        if durable:
            _fsync(os.path.dirname(os.path.abspath(dst)))
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(partial)
        raise


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
