"""Copying a disk's contents into another image: ``convert`` to a new file in any format ce writes, ``write_onto``
an existing disk. A raw source going to a container with a layout may be filled by ce (ce.disks.layouts) or
converted by qemu-img, whichever was faster for that pair here (FILL_LOCALLY); everything else is ``qemu-img
convert``, watched for progress and cancel."""
from __future__ import annotations

import functools
import os
from dataclasses import replace

from ..errors import DiskTooSmall
from .create import partial_output, require_destination, verify_output
from .extents import round_up
from .formats import FORMAT_LABELS, choose_subformat, create_options, qemu_format
from .layouts import fill as fill_container, streamable
from .probe import DiskInfo, info, is_raw_target, refuse_differencing, verify_azure_vhd
from .qemuimg import convert as qemu_convert, create as qemu_create, stop_if_canceled
from .writeback import while_written

MiB = 1 << 20
METHODS = ("fill", "qemu-img")
# (format, subformat) of a raw disk's container -> whether ce fills it itself rather than run qemu-img convert:
# the faster of the two per pair in bench/disks.py's interleaved whole runs (README, "Speed"). Both write the same
# disk (tests/unit/test_conversion_methods.py); on a share only the fill can write in place (ce.smb upload).
# 1 GiB, 3-5 rounds, since the fill copies in the kernel: faster for VHDX, fixed VHDX and VMDK (1.2-2.5x) and for a
# fixed VHD (1.2-2.9x half-zero; dense 1.8x in a run of that pair alone, 0.6-1.0 in two whole bench runs); a dynamic
# VHD was a tie (medians of five runs 0.77 vs 0.76 s/GiB dense, 0.65 vs 0.60 half-zero) and, since outputs leave the
# page cache as they are written (ce.disks.writeback), qemu-img is ahead (0.53 vs 1.01 dense, 0.39 vs 0.68): it stays
# qemu-img's (probably because the fill writes each block's sector bitmap last, into pages already dropped).
# A fixed VHDX stays filled whatever the timing: qemu-img's own is twice the disk's size (blocks after the room).
FILL_LOCALLY = {("vhdx", "dynamic"): True, ("vhdx", "fixed"): True, ("vpc", "dynamic"): False,
                ("vpc", "fixed"): True, ("vmdk", "monolithicSparse"): True}


def convert(src, dst, dst_fmt: str, *, src_fmt: str | None = None, subformat: str | None = None,
            progress=None, cancel=None, azure_fixed: bool = False, overwrite: bool = False,
            durable: bool = True, method: str | None = None) -> DiskInfo:
    """Convert ``src`` to ``dst`` in ``dst_fmt`` ("vhd" or "vpc", "vhdx", "vmdk", "qcow2", "raw").

    ``progress(percent)`` is called with increasing values ending at 100; ``cancel`` is a threading.Event or a
    callable polled while qemu-img runs. ``azure_fixed`` writes a fixed VHD whose virtual size is rounded up to a
    whole MiB (the padding reads as zeros; the source is never modified). ``durable=False`` skips flushing the
    output to stable storage, for scratch files that do not outlive the step (a flush of a 1 GiB file costs seconds);
    a durable output is written back to disk while it is written (ce.disks.writeback), so its flush waits less.
    ``method`` "fill" or "qemu-img" overrides FILL_LOCALLY for a raw disk going to a container ce can fill (to
    measure and test both); any other pair is always qemu-img's.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    fmt = qemu_format(dst_fmt)
    subformat = choose_subformat(fmt, subformat, azure_fixed)
    source = info(src, src_fmt)
    refuse_differencing(source)
    size = round_up(source.virtual_size, MiB) if azure_fixed else source.virtual_size
    require_destination(dst, overwrite)
    stop_if_canceled(cancel)
    doing = f"converting {src} to {FORMAT_LABELS[fmt]} failed"
    with partial_output(dst, overwrite, durable) as partial:
        options = create_options(fmt, subformat)
        if not azure_fixed and fills(source, fmt, subformat, method):
            qemu_create(partial, fmt, size, "-o", options, doing=doing)     # read back once, filled, below
            fill_container(src, partial, fmt, subformat, progress=progress,
                           cancel=functools.partial(stop_if_canceled, cancel), writeback=durable)
        else:
            if azure_fixed:
                # Pre-create the larger target and fill it: qemu-img convert cannot pad, and resizing the source
                # would modify a disk this step does not own.
                qemu_create(partial, fmt, size, "-o", options, doing=doing)
                target_args = ["-n", "--target-is-zero"]
            else:
                target_args = ["-O", fmt, *(("-o", options) if options else ())]
            watch = while_written(partial, progress) if durable else progress
            qemu_convert(["-f", source.format, *target_args, src, partial], output_format=fmt, progress=watch,
                         cancel=cancel, doing=doing)
        result = verify_output(partial, fmt, subformat, size)
        if azure_fixed:
            verify_azure_vhd(partial)
    return replace(result, path=dst)


def fills(source: DiskInfo, fmt: str, subformat: str | None, method: str | None = None) -> bool:
    """Whether ce fills the container itself (a raw source, a container with a layout, the faster method)."""
    if method not in (None, *METHODS):
        raise ValueError(f"unknown conversion method {method!r}: use one of {', '.join(METHODS)}")
    if not streamable(source, fmt, subformat):
        return False
    return method == "fill" if method else FILL_LOCALLY.get((fmt, subformat), False)


def write_onto(src, target, *, src_fmt: str | None = None, progress=None, cancel=None,
               label: str | None = None) -> DiskInfo:
    """Write the contents of ``src`` over the existing disk ``target`` (a file or block device), in ``target``'s
    own format, from offset 0; ``target`` must be at least as large. Areas that are zero in ``src`` are zeroed in
    ``target`` (qemu-img uses write-zeroes / discard), so stale data never shows through. ``label`` names ``src``
    in errors.

    There is no partial name for an attached disk: a failure or cancel leaves it partly written, and the error
    says so."""
    src, target = os.fspath(src), os.fspath(target)
    source = info(src, src_fmt)
    refuse_differencing(source)
    dest = info(target, "raw" if is_raw_target(target) else None)
    if dest.virtual_size < source.virtual_size:
        raise DiskTooSmall(f"{target} holds {dest.virtual_size} bytes but the image needs {source.virtual_size}")
    stop_if_canceled(cancel)
    doing = f"writing {label or src} onto {target} failed (the disk is now partly written)"
    qemu_convert(["-n", "-f", source.format, "-O", dest.format, src, target], output_format=dest.format,
                 progress=progress, cancel=cancel, doing=doing,
                 canceled_message="writing onto the disk was canceled; the disk is partly written: run the step "
                                  "again before using it")
    return dest
