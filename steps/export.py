"""export: the attached disk -> a VHDX (default) or VHD file on an SMB share, optionally with its md5 / sha256.

qemu-img cannot write to SMB. A raw disk -- an attached block device, or a raw file -- is streamed: its non-zero
chunks go straight to their places inside the VHDX / VHD on the share, and the container's metadata, made by
``qemu-img create`` in scratch space and filled in by ce.layouts, follows them; the disk is read once and nothing
of its size is written locally. Any other source format is first converted into a local scratch file, which is
then uploaded with its holes skipped. Either way the share sees ``NAME.partial``, renamed to ``NAME`` once its
size is verified.

Checked before any work, in this order: the disk is readable; the share accepts the account; ``SmbDiskName`` is
free (or ``overwriteTargetFile``); the share has at least twice the disk's virtual size free (the service's rule);
the local scratch directory can hold the converted file.
"""
from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ce import disks, hashing, layouts, nbdexport, smb, staging
from ce.errors import naming_field
from ce.smb import RemoteExists, RemoteStat, ShareFull, SmbShare
from ce.smbtarget import StorageLocation
from ce.step import InvalidParams, StepContext, StepType, register

NAME = "export"
FORMATS = {"VhdxDiskFormat": ("vhdx", "dynamic", ".vhdx"), "VhdDiskFormat": ("vhd", "dynamic", ".vhd")}
DISK_EXTENSIONS = (".vhdx", ".vhd", ".avhdx", ".avhd", ".vmdk", ".qcow2", ".raw", ".img")
STREAM_SCRATCH = 16 << 20              # the empty container (fixed ones are sparse files)
SPACE_FACTOR = 2                      # the service's rule: free space >= twice the image's virtual size


class InvalidName(InvalidParams):
    code = "invalid_params"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    disk: str = Field(description="the attached source disk: disk file (raw, qcow2, vhd, vhdx, vmdk) or block device")
    outputStorageLocation: StorageLocation
    SmbDiskName: str = Field(min_length=1, max_length=200,
                             description="file name on the share; the format's extension is added when missing")
    SmbDiskFormat: Literal["VhdxDiskFormat", "VhdDiskFormat"] = "VhdxDiskFormat"
    SmbDiskSubformat: Literal["dynamic", "fixed"] = Field("dynamic", description="dynamic (sparse) or fixed")
    overwriteTargetFile: bool = False
    hashDisk: bool = Field(False, description="return the md5 and sha256 of the disk's contents in the result")
    timeout: int = Field(7200, ge=10, le=7 * 86400, description="seconds for the whole step")
    dryRun: bool = False


def file_name(params: Params) -> str:
    """SmbDiskName with the format's extension; a name with another disk extension is refused."""
    fmt, _, extension = FORMATS[params.SmbDiskFormat]
    name = params.SmbDiskName
    if "\\" in smb.normalize_path(name):         # refuses '..', absolute and UNC paths, device names first
        raise InvalidName(f"params.SmbDiskName {name!r} must be a file name, not a path: put the folder in "
                          "outputStorageLocation.Location")
    lowered = name.lower()
    if lowered.endswith(extension):
        return name
    other = next((e for e in DISK_EXTENSIONS if lowered.endswith(e)), None)
    if other:
        raise InvalidName(f"params.SmbDiskName {name!r} ends with {other} but SmbDiskFormat is "
                          f"{params.SmbDiskFormat}: use a {extension} name or change the format")
    return name + extension


def validate(params: Params) -> None:
    with naming_field("SmbDiskName"):
        file_name(params)


# ---------------------------------------------------------------- plan

def plan(params: Params, name: str | None = None, step: str = NAME) -> dict:
    """What the export would do, from reads only: source facts, target, share space, scratch space."""
    name = name or file_name(params)
    fmt, _, _ = FORMATS[params.SmbDiskFormat]
    source = disks.info(params.disk)
    disks._refuse_differencing(source)
    target = params.outputStorageLocation
    with target.share() as share:
        existing = _existing(share, name, params.overwriteTargetFile)
        free, total = share.free_space()
        stale = share.stale_partial(name)
    required = SPACE_FACTOR * source.virtual_size
    available = free + (existing or 0) + stale
    if available < required:
        raise ShareFull(f"{target.location} has {_mib(free)} free but exporting a {_mib(source.virtual_size)} disk "
                        f"needs {_mib(required)} (twice its virtual size); free space on the share or choose "
                        "another location")
    method = "stream" if layouts.streamable(source, disks.qemu_format(fmt), params.SmbDiskSubformat) \
        else "convert, then upload"
    needed = STREAM_SCRATCH if method == "stream" else staging.output_estimate(source, fmt, params.SmbDiskSubformat)
    scratch = staging.require_scratch(needed, f"exporting {params.disk} as {fmt.upper()}")
    return {
        "step": step, "dryRun": True,
        "source": _source_facts(source),
        "target": {"location": str(target.location), "name": name, "path": f"{target.location}\\{name}",
                   "format": fmt, "subformat": params.SmbDiskSubformat, "virtual_size": source.virtual_size,
                   "replaces_existing": existing is not None, "method": method},
        "space": {"share_free": free, "share_total": total, "required": required},
        "scratch": scratch,
        "hash": list(hashing.ALGORITHMS) if params.hashDisk else None,
    }


def _existing(share: SmbShare, name: str, overwrite: bool) -> int | None:
    """The allocated size of a file already at ``name`` (None when there is none); refused unless overwrite."""
    if not share.exists(name):
        return None
    found = share.stat(name)
    if found.is_dir:
        raise RemoteExists(f"{share.location}\\{name} is a folder: choose another SmbDiskName")
    if not overwrite:
        raise RemoteExists(f"{share.location}\\{name} already exists: set overwriteTargetFile to replace it or "
                           "choose another SmbDiskName")
    return found.allocated


def _source_facts(source: disks.DiskInfo) -> dict:
    return {"path": source.path, "format": disks.FORMAT_LABELS[source.format].lower(),
            "subformat": source.subformat, "virtual_size": source.virtual_size,
            "actual_size": source.actual_size, "is_block_device": source.is_block_device}


# ---------------------------------------------------------------- run

def run(params: Params, ctx: StepContext, name: str | None = None, step: str = NAME) -> dict:
    planned = plan(params, name, step)
    if params.dryRun:
        return planned
    return upload_disk(params, ctx, planned, step)


def upload_disk(params: Params, ctx: StepContext, planned: dict, step: str) -> dict:
    started = time.monotonic()
    target = planned["target"]
    stop = staging.Stopper(ctx, params.timeout, step)
    result = {"step": step, "dryRun": False, "source": planned["source"], "hashes": None}
    streaming = target["method"] == "stream"
    with stop.translating(), contextlib.ExitStack() as stack:
        start, hasher = 0.0, None
        if params.hashDisk and streaming:          # the stream reads every byte anyway: hash in the same pass
            hasher = stack.enter_context(hashing.ContentHasher(params.disk, planned["source"]["virtual_size"]))
        elif params.hashDisk:
            ctx.progress(0, "hashing the disk")
            digest = hashing.hash_disk(params.disk, progress=staging.progress_band(ctx, 0, 30, "hashing the disk"),
                                       cancel=stop)
            result["hashes"] = digest.hashes
            start = 30.0
        with staging.scratch_dir(step) as scratch:
            if streaming:
                stored = _stream(params, scratch, target, stop, ctx, hasher)
            else:
                stored = _convert_and_upload(params, scratch, target, stop, ctx, start)
        if hasher is not None:
            result["hashes"] = hasher.finish().hashes
    ctx.progress(100, "done")
    return {**result,
            "target": {**target, "file_size": stored.size, "allocated_on_share": stored.allocated},
            "bytes_sent": stored.sent, "seconds": round(time.monotonic() - started, 3)}


def _stream(params: Params, scratch: Path, target: dict, stop, ctx: StepContext, hasher) -> RemoteStat:
    fmt = disks.qemu_format(target["format"])
    layout = layouts.make(fmt, target["subformat"], target["virtual_size"], scratch)
    doing = f"streaming the disk into {target['name']}" + (" and hashing it" if hasher else "")
    with params.outputStorageLocation.share() as share:
        return share.upload(params.disk, target["name"], overwrite=params.overwriteTargetFile, cancel=stop,
                            layout=layout, tap=hasher.feed if hasher else None,
                            verify=functools.partial(nbdexport.verify, scratch, fmt, target["subformat"],
                                                     target["virtual_size"], target["path"]),
                            progress=staging.progress_band(ctx, 0, 100, doing))


def _convert_and_upload(params: Params, scratch: Path, target: dict, stop, ctx: StepContext,
                        start: float) -> RemoteStat:
    upload_from = start + (100 - start) * 0.35
    local = scratch / "disk"
    disks.convert(params.disk, local, target["format"], subformat=target["subformat"], durable=False,
                  progress=staging.progress_band(ctx, start, upload_from, f"converting to {target['format'].upper()}"),
                  cancel=stop)
    with params.outputStorageLocation.share() as share:
        return share.upload(local, target["name"], overwrite=params.overwriteTargetFile, cancel=stop,
                            progress=staging.progress_band(ctx, upload_from, 100, f"uploading {target['name']}"))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


STEP = register(StepType(name=NAME, summary="export the attached disk to a VHDX or VHD file on an SMB share",
                         Params=Params, run=run, disk_params=("disk",), validate=validate))
