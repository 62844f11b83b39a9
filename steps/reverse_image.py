"""reverseImage: a VHD(X) on an SMB share -> raw blocks on the attached disk (file or block device).

The image is read where it is: ce serves the file on the share to qemu-img over NBD on a local socket
(ce.nbdexport), so no local copy is made, whatever the image's size. qemu-img checks the image, then writes it
over the attached disk from offset 0 (``convert -n``) through a small local qcow2 overlay of ``outputSizeMb`` that
reads as zeros past the image's end. The whole ``outputSizeMb`` is written: where the image has no data, and
beyond its end, the disk is zeroed (qemu-img uses write-zeroes / discard, cheap on thin disks), so nothing of what
the disk held before shows through. A share that fails in the middle is reported with its own error.

Refused before the download: an image smaller than nothing or larger than ``outputSizeMb``; a differencing image
(its parent is not part of the job); a block device smaller than ``outputSizeMb``; and, unless
``overwriteOutput``, a disk whose first MiB is not all zeros (it holds a partition table or a boot sector).
A failure or a cancel while writing leaves the attached disk partly written -- there is no second name for an
attached disk -- and the error says so.
"""
from __future__ import annotations

import os
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ce import disks, hashing, nbdexport, staging
from ce.errors import CeError, naming_field
from ce.smb import RemoteNotFound, normalize_path
from ce.smbtarget import StorageLocation
from ce.step import StepContext, StepType, register

NAME = "reverseImage"
MiB = 1 << 20
FORMATS = {"VhdxDiskFormat": "vhdx", "VhdDiskFormat": "vpc"}
EXTENSIONS = {".vhdx": "vhdx", ".vhd": "vpc"}
OVERLAY_SCRATCH = 16 * MiB          # the overlay's qcow2 metadata and the NBD socket


class OutputNotEmpty(CeError):
    code = "disk_not_empty"


class OutputTooSmall(CeError):
    code = "disk_too_small"


class ImageMismatch(CeError):
    code = "image_format_mismatch"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    disk: str = Field(description="the attached output disk: block device or disk file, written from offset 0")
    inputStorageLocation: StorageLocation
    inputImageFilename: str = Field(min_length=1, description="the VHD or VHDX file in the location's folder")
    inputImageFormat: Literal["VhdxDiskFormat", "VhdDiskFormat"] | None = Field(
        None, description="default: from the file's extension")
    outputSizeMb: int | None = Field(None, ge=1, description="MiB to write; at least the image's virtual size "
                                                             "(default: the virtual size rounded up to a MiB)")
    overwriteOutput: bool = False
    provisionType: Literal["Thin"] = Field("Thin", description="the service always sends Thin")
    timeout: int = Field(7200, ge=10, le=7 * 86400)
    dryRun: bool = False


def expected_format(params: Params) -> str:
    name = normalize_path(params.inputImageFilename)
    by_extension = EXTENSIONS.get(os.path.splitext(name)[1].lower())
    if params.inputImageFormat:
        return FORMATS[params.inputImageFormat]
    if by_extension is None:
        raise ImageMismatch(f"params.inputImageFilename {name!r} does not end with .vhdx or .vhd: give "
                            "inputImageFormat")
    return by_extension


def validate(params: Params) -> None:
    with naming_field("inputImageFilename"):
        expected_format(params)


# ---------------------------------------------------------------- plan

def plan(params: Params) -> dict:
    fmt = expected_format(params)
    target = _target_info(params.disk)
    with params.inputStorageLocation.share() as share:
        found = share.stat(params.inputImageFilename)
        if found.is_dir:
            raise RemoteNotFound(f"{params.inputStorageLocation.location}\\{params.inputImageFilename} is a folder, "
                                 "not a VHD(X) file")
        with share.open_read(params.inputImageFilename) as reader:
            image_fmt, subformat, virtual = disks.header_facts(reader.read_at, found.size)
    label = disks.FORMAT_LABELS[image_fmt]
    if image_fmt != fmt:
        raise ImageMismatch(f"{params.inputImageFilename} is a {label}, not a {disks.FORMAT_LABELS[fmt]}: fix "
                            "inputImageFormat or the file name")
    if subformat == "differencing":
        raise disks.UnsupportedFormat(f"{params.inputImageFilename} is a differencing {label}: its parent is not "
                                      "part of the job; merge it into one disk first")
    size = _output_size(params, virtual)
    grows = _check_target(params, target, size)
    scratch = staging.require_scratch(OVERLAY_SCRATCH, f"reading {params.inputImageFilename} from the share")
    return {"step": NAME, "dryRun": True,
            "source": {"location": str(params.inputStorageLocation.location), "name": params.inputImageFilename,
                       "format": label.lower(), "subformat": subformat, "virtual_size": virtual,
                       "file_size": found.size, "allocated": found.allocated},
            "target": {"disk": params.disk, "format": disks.FORMAT_LABELS[target.format].lower(),
                       "is_block_device": target.is_block_device, "size": target.virtual_size,
                       "output_size": size, "grows_to": grows, "zeroed_tail": size - virtual},
            "scratch": scratch}


def _target_info(path: str) -> disks.DiskInfo:
    """An empty regular file is a thin disk of size 0 that grows to outputSizeMb; anything else must be a disk."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return disks.DiskInfo(path=path, format="raw", virtual_size=0, actual_size=0)
    return disks.info(path, "raw" if disks._is_raw_target(path) else None)


def _output_size(params: Params, virtual: int) -> int:
    if params.outputSizeMb is None:
        return -(-virtual // MiB) * MiB
    size = params.outputSizeMb * MiB
    if size < virtual:
        raise OutputTooSmall(f"params.outputSizeMb {params.outputSizeMb} is smaller than the image's virtual size "
                             f"({virtual} bytes = {virtual / MiB:,.2f} MiB): give at least {-(-virtual // MiB)}")
    return size


def _check_target(params: Params, target: disks.DiskInfo, size: int) -> int | None:
    """Refuse a disk that is too small (a file may grow) or not empty; returns the size a file grows to."""
    grows = None
    if target.virtual_size < size:
        if target.is_block_device or target.format != "raw":
            raise OutputTooSmall(f"{params.disk} holds {target.virtual_size / MiB:,.0f} MiB but outputSizeMb asks for "
                                 f"{size // MiB}: attach a larger disk or lower outputSizeMb")
        grows = size
    if not params.overwriteOutput and not _first_mib_is_zero(target):
        raise OutputNotEmpty(f"{params.disk} is not empty (its first MiB holds data, such as a partition table): "
                             "set overwriteOutput to replace its contents, or attach an empty disk")
    return grows


def _first_mib_is_zero(target: disks.DiskInfo) -> bool:
    length = min(MiB, target.virtual_size)
    if length == 0:
        return True
    if target.format == "raw":
        blocks = hashing._file_blocks(target.path, length)
    else:
        blocks = hashing._decoded_blocks(target, None, length)
    return all(not any(block) for block in map(bytes, blocks))


# ---------------------------------------------------------------- run

def run(params: Params, ctx: StepContext) -> dict:
    planned = plan(params)
    if params.dryRun:
        return planned
    started = time.monotonic()
    stop = staging.Stopper(ctx, params.timeout, NAME)
    source, target = planned["source"], planned["target"]
    fmt = disks.qemu_format(source["format"])
    where = f"{source['location']}\\{source['name']}"
    with stop.translating(), staging.scratch_dir("reverse") as scratch, \
            nbdexport.serving(params.inputStorageLocation, source["name"], scratch) as export:
        virtual = disks.remote_info(export.uri, fmt, where, export.reader.read_at, export.size).virtual_size
        if virtual != source["virtual_size"]:
            raise ImageMismatch(f"{where} now reads as {virtual} bytes, not {source['virtual_size']}: it changed on "
                                "the share; run the step again")
        if target["grows_to"]:
            os.truncate(params.disk, target["grows_to"])
        overlay = scratch / "image.qcow2"
        disks.create_overlay(export.uri, fmt, overlay, target["output_size"])
        disks.write_onto(overlay, params.disk, progress=staging.progress_band(ctx, 0, 100, "writing the disk"),
                         cancel=stop, label=where)
    ctx.progress(100, "done")
    return {**planned, "dryRun": False, "bytes_written": target["output_size"],
            "seconds": round(time.monotonic() - started, 3)}


STEP = register(StepType(name=NAME, summary="write a VHD(X) from an SMB share onto the attached disk as raw blocks",
                         Params=Params, run=run, disk_params=("disk",), validate=validate))
