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
from typing import Literal

from pydantic import Field

from ce import disks, hashing, nbdexport, staging
from ce.changes import DiskRead, DiskWrite, Plan, Result
from ce.cli.smbargs import FORMAT_NAMES, location_flags, split_file, storage
from ce.document import Facts as FactsBase
from ce.errors import DiskNotEmpty, DiskTooSmall, ImageFormatMismatch, OutputDirMissing, RemoteNotFound, \
    UnsupportedFormat, naming_field
from ce.sizes import human_size
from ce.smb import normalize_path
from ce.smb.target import StorageLocation
from ce.step import CliSpec, StepContext, StepParams, StepType

NAME = "reverseImage"
MiB = 1 << 20
FORMATS = {"VhdxDiskFormat": "vhdx", "VhdDiskFormat": "vpc"}
EXTENSIONS = {".vhdx": "vhdx", ".vhd": "vpc"}
OVERLAY_SCRATCH = 16 * MiB          # the overlay's qcow2 metadata and the NBD socket


class Params(StepParams):
    disk: str = Field(description="the attached output disk: block device or disk file, written from offset 0")
    inputStorageLocation: StorageLocation
    inputImageFilename: str = Field(min_length=1, description="the VHD or VHDX file in the location's folder")
    inputImageFormat: Literal["VhdxDiskFormat", "VhdDiskFormat"] | None = Field(
        None, description="default: from the file's extension")
    outputSizeMb: int | None = Field(None, ge=1, description="MiB to write; at least the image's virtual size "
                                                             "(default: the virtual size rounded up to a MiB)")
    overwriteOutput: bool = False
    provisionType: Literal["Thin"] = Field("Thin", description="the service always sends Thin")


def expected_format(params: Params) -> str:
    name = normalize_path(params.inputImageFilename)
    by_extension = EXTENSIONS.get(os.path.splitext(name)[1].lower())
    if params.inputImageFormat:
        return FORMATS[params.inputImageFormat]
    if by_extension is None:
        raise ImageFormatMismatch(f"params.inputImageFilename {name!r} does not end with .vhdx or .vhd: give "
                            "inputImageFormat")
    return by_extension


def validate(params: Params) -> None:
    with naming_field("inputImageFilename"):
        expected_format(params)


# ---------------------------------------------------------------- plan

class SourceFacts(FactsBase):
    location: str
    name: str
    format: str
    subformat: str | None = None
    virtualSize: int
    fileSize: int
    allocated: int


class TargetFacts(FactsBase):
    disk: str
    format: str
    isBlockDevice: bool
    size: int
    creates: bool                          # the local file is created
    outputSize: int
    growsTo: int | None = None             # the file is grown to this size first
    zeroedTail: int                        # bytes after the image's data that are zeroed


class Facts(FactsBase):
    source: SourceFacts
    target: TargetFacts
    scratch: staging.ScratchFacts
    bytesWritten: int | None = None


def plan(params: Params, ctx: StepContext) -> Plan:
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
        raise ImageFormatMismatch(f"{params.inputImageFilename} is a {label}, not a {disks.FORMAT_LABELS[fmt]}: fix "
                            "inputImageFormat or the file name")
    if subformat == "differencing":
        raise UnsupportedFormat(f"{params.inputImageFilename} is a differencing {label}: its parent is not "
                                "part of the job; merge it into one disk first")
    size = _output_size(params, virtual)
    grows = _check_target(params, target, size)
    scratch = staging.require_scratch(OVERLAY_SCRATCH, f"reading {params.inputImageFilename} from the share")
    where = f"{params.inputStorageLocation.location}\\{params.inputImageFilename}"
    facts = {"source": {"location": str(params.inputStorageLocation.location), "name": params.inputImageFilename,
                        "format": label.lower(), "subformat": subformat, "virtualSize": virtual,
                        "fileSize": found.size, "allocated": found.allocated},
             "target": {"disk": params.disk, "format": disks.FORMAT_LABELS[target.format].lower(),
                        "isBlockDevice": target.is_block_device, "size": target.virtual_size,
                        "creates": not os.path.lexists(params.disk),
                        "outputSize": size, "growsTo": grows, "zeroedTail": size - virtual},
             "scratch": scratch}
    changes = [DiskRead(source=where, format=label.lower(), subformat=subformat, virtual_size=virtual, in_place=True),
               DiskWrite(target=params.disk, format="raw", virtual_size=size, source=where, method="write",
                         replaces_existing=params.overwriteOutput)]
    return Plan(step=NAME, changes=changes, facts=facts)


def _target_info(path: str) -> disks.DiskInfo:
    """An empty regular file -- or a new one, in a folder that exists (the command line; the server only writes
    attached disks) -- is a thin disk of size 0 that grows to outputSizeMb; anything else must be a disk."""
    if not os.path.lexists(path):
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise OutputDirMissing(f"{path} does not exist and neither does its folder: create the folder, or give "
                                   "an existing disk")
        return disks.DiskInfo(path=path, format="raw", virtual_size=0, actual_size=0)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return disks.DiskInfo(path=path, format="raw", virtual_size=0, actual_size=0)
    return disks.info(path, "raw" if disks.is_raw_target(path) else None)


def _output_size(params: Params, virtual: int) -> int:
    if params.outputSizeMb is None:
        return -(-virtual // MiB) * MiB
    size = params.outputSizeMb * MiB
    if size < virtual:
        raise DiskTooSmall(f"params.outputSizeMb {params.outputSizeMb} is smaller than the image's virtual size "
                             f"({virtual} bytes = {virtual / MiB:,.2f} MiB): give at least {-(-virtual // MiB)}")
    return size


def _check_target(params: Params, target: disks.DiskInfo, size: int) -> int | None:
    """Refuse a disk that is too small (a file may grow) or not empty; returns the size a file grows to."""
    grows = None
    if target.virtual_size < size:
        if target.is_block_device or target.format != "raw":
            raise DiskTooSmall(f"{params.disk} holds {target.virtual_size / MiB:,.0f} MiB but outputSizeMb asks for "
                                 f"{size // MiB}: attach a larger disk or lower outputSizeMb")
        grows = size
    if not params.overwriteOutput and not _first_mib_is_zero(target):
        raise DiskNotEmpty(f"{params.disk} is not empty (its first MiB holds data, such as a partition table): "
                             "set overwriteOutput to replace its contents, or attach an empty disk")
    return grows


def _first_mib_is_zero(target: disks.DiskInfo) -> bool:
    length = min(MiB, target.virtual_size)
    if length == 0:
        return True
    if target.format == "raw":
        blocks = disks.file_blocks(target.path, length)
    else:
        blocks = hashing.decoded_blocks(target, None, length)
    return all(not any(block) for block in map(bytes, blocks))


# ---------------------------------------------------------------- apply

def apply(params: Params, planned: Plan, ctx: StepContext) -> Result:
    source, target = planned.facts["source"], planned.facts["target"]
    fmt = disks.qemu_format(source["format"])
    where = f"{source['location']}\\{source['name']}"
    with staging.scratch_dir("reverse") as scratch, \
            nbdexport.serving(params.inputStorageLocation, source["name"], scratch) as export:
        virtual = disks.remote_info(export.uri, fmt, where, export.reader.read_at, export.size).virtual_size
        if virtual != source["virtualSize"]:
            raise ImageFormatMismatch(f"{where} now reads as {virtual} bytes, not {source['virtualSize']}: it "
                                      "changed on the share; run the step again")
        if target.get("creates"):
            open(params.disk, "xb").close()          # a new file, never one that appeared since the plan
        if target["growsTo"]:
            os.truncate(params.disk, target["growsTo"])
        overlay = scratch / "image.qcow2"
        disks.create_overlay(export.uri, fmt, overlay, target["outputSize"])
        disks.write_onto(overlay, params.disk, cancel=ctx.stop, label=where,
                         progress=ctx.band(0, 100, "writing the disk", size=target["outputSize"]))
    return Result.of(planned, facts={**planned.facts, "bytesWritten": target["outputSize"]})


def describe(document: Plan | Result) -> list[str]:
    target = document.facts["target"]
    done = f" in {document.seconds:.1f} s" if isinstance(document, Result) else ""
    return [f"{human_size(target['outputSize'])} onto {target['disk']} ({human_size(target['zeroedTail'])} "
            f"zeroed past the image's end){done}"]


# ---------------------------------------------------------------- command line

def arguments(p) -> None:
    p.add_argument("image", help=r"the SMB file: \\host\share\folder\disk.vhdx")
    p.add_argument("disk", help="the output disk: block device or file (written from offset 0)")
    p.add_argument("--size-mb", type=int, help="MiB to write (default: the image's size)")
    p.add_argument("--source-format", choices=tuple(FORMAT_NAMES), type=str.lower,
                   help="the image's format (default: from the file's extension)")
    p.add_argument("--overwrite", action="store_true", help="allow a disk that is not empty (overwriteOutput)")


def cli_params(args) -> dict:
    folder, name = split_file(args.image)
    return {"disk": args.disk, "inputStorageLocation": storage(args, folder), "inputImageFilename": name,
            "inputImageFormat": FORMAT_NAMES.get(args.source_format), "outputSizeMb": args.size_mb,
            "overwriteOutput": args.overwrite}


STEP = StepType(name=NAME, Facts=Facts, summary="write a VHD(X) from an SMB share onto the attached disk as raw blocks",
                Params=Params, plan=plan, apply=apply, disk_params=("disk",),
                error_groups=("disk", "smb", "step"), validate=validate, describe=describe,
                cli=CliSpec("reverse-image", "write a VHD(X) from an SMB share onto a disk as raw blocks", arguments,
                            cli_params, flags={"disk": "DISK", "inputImageFilename": "IMAGE",
                                               "inputImageFormat": "--source-format", "outputSizeMb": "--size-mb",
                                               "overwriteOutput": "--overwrite",
                                               **location_flags("inputStorageLocation", "IMAGE")}))
