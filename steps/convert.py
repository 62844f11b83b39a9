"""convert: any supported disk format -> any other (raw, qcow2, vhd, vhdx, vmdk), locally or to / from SMB.

The source is a local file or block device (``source``) or a file on a share (``inputStorageLocation`` +
``inputImageFilename``, read in place: ce serves it to qemu-img over a local NBD socket, ce.nbdexport, and nothing
of its size is copied locally; a differencing image or one with a backing file is refused). The output is a local
file (``output``, written as ``output.partial`` and renamed once read back right) or a file on a share
(``outputStorageLocation`` + ``outputImageFilename``, uploaded as ``.partial`` and renamed once its size on the
share is verified: a local raw disk going to VHDX or VHD is streamed into its container as an export does, anything
else is converted into scratch space first; what an interrupted attempt left in ``.partial`` is read back and reused
unless ``resume`` is false, ce.smb.resume). ``azureFixed`` writes a fixed VHD whose virtual size is a whole
number of MiB (rounded up with zeros), as Azure requires.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Literal

from pydantic import Field, model_validator

from ce import disks, nbdexport, staging
from ce.disks import layouts
from ce.changes import DiskRead, DiskWrite, Plan, Result
from ce.cli.smbargs import is_smb, location_flags, split_file, storage
from ce.diskexport import ResumeFacts
from ce.document import Facts as FactsBase
from ce.errors import ImageChangedSincePlan, RemoteExists, naming_field
from ce.sizes import human_size
from ce.smb import normalize_path
from ce.smb.target import StorageLocation
from ce.step import CliSpec, StepContext, StepParams, StepType

NAME = "convert"
OVERLAY_SCRATCH = 16 << 20          # a source on a share is read in place: a qcow2 overlay and a socket
EXTENSION_FORMATS = {".raw": "raw", ".img": "raw", ".qcow2": "qcow2", ".vhd": "vpc", ".vhdx": "vhdx",
                     ".vmdk": "vmdk"}


class Params(StepParams):
    source: str | None = Field(None, description="local disk file or block device")
    inputStorageLocation: StorageLocation | None = None
    inputImageFilename: str | None = None
    sourceFormat: str | None = Field(None, description="default: probed (a fixed VHD is recognised by its footer)")
    output: str | None = Field(None, description="local output file (over the server: an attached disk file, "
                                                 "replaced with overwriteOutput)")
    outputStorageLocation: StorageLocation | None = None
    outputImageFilename: str | None = None
    outputFormat: Literal["raw", "qcow2", "vhd", "vhdx", "vmdk"]
    subformat: str | None = Field(None, description="vhd/vhdx: dynamic|fixed; vmdk: monolithicSparse|streamOptimized")
    azureFixed: bool = Field(False, description="fixed VHD, virtual size rounded up to a whole MiB")
    overwriteOutput: bool = False
    resume: bool = Field(True, description="output on a share: continue what an earlier attempt of the same "
                                           "conversion left in NAME.partial (read back and checked; only what is "
                                           "missing or different is sent); false starts over")

    @model_validator(mode="after")
    def _one_source_one_output(self):
        if (self.source is None) == (self.inputStorageLocation is None):
            raise ValueError("give either source (a local disk) or inputStorageLocation + inputImageFilename")
        if (self.output is None) == (self.outputStorageLocation is None):
            raise ValueError("give either output (a local file) or outputStorageLocation + outputImageFilename")
        if (self.inputStorageLocation is None) != (self.inputImageFilename is None):
            raise ValueError("inputStorageLocation and inputImageFilename go together")
        if (self.outputStorageLocation is None) != (self.outputImageFilename is None):
            raise ValueError("outputStorageLocation and outputImageFilename go together")
        return self


def validate(params: Params) -> None:
    fmt = disks.qemu_format(params.outputFormat)
    with naming_field("subformat"):
        disks.choose_subformat(fmt, params.subformat, params.azureFixed)
    if params.sourceFormat:
        with naming_field("sourceFormat"):
            disks.qemu_format(params.sourceFormat)
    for field in ("inputImageFilename", "outputImageFilename"):
        if getattr(params, field) is not None:
            with naming_field(field):
                normalize_path(getattr(params, field))


# ---------------------------------------------------------------- plan

class SourceFacts(FactsBase):
    """A local source (path) or a file on a share (location, name, fileSize)."""
    path: str | None = None
    location: str | None = None
    name: str | None = None
    fileSize: int | None = None
    format: str
    subformat: str | None = None
    virtualSize: int
    isBlockDevice: bool | None = None


class OutputFacts(FactsBase):
    """A local output (path) or one on a share (location, name, method, replacesExisting, shareFree)."""
    format: str
    subformat: str | None = None
    virtualSize: int | None = None
    azureFixed: bool
    path: str | None = None
    location: str | None = None
    name: str | None = None
    replacesExisting: bool | None = None
    shareFree: int | None = None
    method: Literal["stream", "convert_then_upload"] | None = None
    fileSize: int | None = None


class Facts(FactsBase):
    source: SourceFacts
    output: OutputFacts
    scratch: staging.ScratchFacts | None = None
    resume: ResumeFacts | None = None       # an output on a share: ce.smb.resume.plan_facts
    bytesSent: int | None = None
    bytesReused: int | None = None          # ... found in place in an earlier attempt's NAME.partial
    bytesChecked: int | None = None         # ... read back to find them


def plan(params: Params, ctx: StepContext) -> Plan:
    validate(params)
    fmt = disks.qemu_format(params.outputFormat)
    subformat = disks.choose_subformat(fmt, params.subformat, params.azureFixed)
    if params.inputStorageLocation:
        staging.require_scratch(OVERLAY_SCRATCH, "reading the source from the share")
    source = _plan_source(params)
    upload = _plan_upload(params, _resume_key(params, source["format"], _label(fmt), subformat, ctx.held),
                          ctx.held) if params.outputStorageLocation else None
    if params.output:
        _require_local_output(params.output, params.overwriteOutput)
    size = source["virtualSize"]
    if params.azureFixed and size is not None:
        size = -(-size // (1 << 20)) << 20
    if upload is not None:
        upload["method"] = "stream" if _streams(params, fmt) else "convert_then_upload"
    converting = upload is not None and upload["method"] != "stream"
    scratch_needed = (OVERLAY_SCRATCH if params.inputStorageLocation else 0) \
        + (_estimate(params, source, fmt, subformat) if converting else 0)
    scratch = staging.require_scratch(scratch_needed, "this conversion") if scratch_needed else None
    output = {"format": _label(fmt), "subformat": subformat, "virtualSize": size, "azureFixed": params.azureFixed}
    if upload is not None:
        output.update(upload)
    else:
        output["path"] = params.output
    facts = {"source": source, "output": output, "scratch": scratch, "resume": output.pop("resume", None)}
    return Plan(step=NAME, changes=_changes(params, source, output), facts=facts)


def _changes(params: Params, source: dict, output: dict) -> list:
    """The source read in place (a file on a share) and the output written."""
    origin = source.get("path") or f"{source['location']}\\{source['name']}"
    changes = [] if params.source else [DiskRead(source=origin, format=source["format"], in_place=True,
                                                 subformat=source["subformat"], virtual_size=source["virtualSize"])]
    remote = "location" in output
    method = output["method"] if remote else "convert"
    changes.append(DiskWrite(target=f"{output['location']}\\{output['name']}" if remote else output["path"],
                             format=output["format"], subformat=output["subformat"],
                             virtual_size=output["virtualSize"], source=origin, method=method,
                             replaces_existing=bool(output.get("replacesExisting"))
                             or bool(params.output and os.path.exists(params.output))))
    return changes


def _plan_source(params: Params) -> dict:
    if params.source:
        info = disks.info(params.source, params.sourceFormat)
        disks.refuse_differencing(info)
        return {"path": info.path, "format": _label(info.format), "subformat": info.subformat,
                "virtualSize": info.virtual_size, "isBlockDevice": info.is_block_device}
    where, name = params.inputStorageLocation, params.inputImageFilename
    hint = params.sourceFormat or EXTENSION_FORMATS.get(os.path.splitext(name)[1].lower())
    with staging.scratch_dir(NAME) as scratch, nbdexport.serving(where, name, scratch) as export:
        info = disks.remote_info(export.uri, hint, f"{where.location}\\{name}", export.reader.read_at,
                                 export.size)
    return {"location": str(where.location), "name": name, "fileSize": export.size, "format": _label(info.format),
            "subformat": info.subformat, "virtualSize": info.virtual_size}


def _streams(params: Params, fmt: str) -> bool:
    """A local raw disk going to a share as VHDX or VHD is streamed into its container (steps/export.py); not as
    a VMDK, whose 64 KiB grains would each be a separate SMB write."""
    return bool(params.source) and not params.azureFixed and fmt in ("vhdx", "vpc") \
        and layouts.streamable(disks.info(params.source, params.sourceFormat), fmt, params.subformat)


def _label(fmt: str) -> str:
    return disks.FORMAT_LABELS[fmt].lower()            # vpc -> vhd


def _plan_upload(params: Params, key, held) -> dict:
    """What is at the output's name, the free space and an earlier attempt's partial file, in one round trip over
    the connection the apply uploads on."""
    from ce.smb.resume import survey_facts
    where = params.outputStorageLocation
    with where.step_share(held) as share:
        survey = share.survey(params.outputImageFilename)
    exists, free = survey.final is not None, survey.free
    resume = survey_facts(survey, key, params.resume)
    if exists and not params.overwriteOutput:
        raise RemoteExists(f"{where.location}\\{params.outputImageFilename} already exists: set overwriteOutput to "
                           "replace it or choose another outputImageFilename")
    return {"location": str(where.location), "name": params.outputImageFilename, "replacesExisting": exists,
            "shareFree": free, "resume": resume}


def _resume_key(params: Params, source_format: str, output_format: str, subformat: str | None, held):
    """The key of the upload (ce.smb.resume): this conversion, and the source's size, format and first and last
    MiB -- a local disk's, or those of the file on a share, read over the share (the upload is then of a scratch
    file converted from it, and resumes the same way)."""
    from ce.smb.resume import job_key, key_for, key_read
    container = " ".join(filter(None, (output_format, subformat, "azure" if params.azureFixed else "")))
    origin = params.source or f"{params.inputStorageLocation.location}\\{params.inputImageFilename}"
    job = job_key(NAME, origin, str(params.outputStorageLocation.location), params.outputImageFilename, container)
    if params.source:
        return key_for(params.source, source_format, container, job)
    with params.inputStorageLocation.step_share(held) as share, share.open_read(params.inputImageFilename) as reader:
        return key_read(reader.read_at, reader.size, source_format, container, job)


def _require_local_output(path: str, overwrite: bool) -> None:
    disks.require_destination(path, overwrite)


def _estimate(params: Params, source: dict, fmt: str, subformat: str | None) -> int:
    if params.source:
        return staging.output_estimate(disks.info(params.source, params.sourceFormat), fmt, subformat)
    return source["fileSize"] if subformat != "fixed" else source["virtualSize"] + source["fileSize"]


# ---------------------------------------------------------------- run

def apply(params: Params, planned: Plan, ctx: StepContext) -> Result:
    facts = planned.facts
    with staging.scratch_dir(NAME) as scratch, contextlib.ExitStack() as remote:
        resuming = _resuming(params, facts, ctx.held)
        source, source_fmt = _open_source(params, facts["source"], scratch, remote)
        if facts["output"].get("method") == "stream":
            stored = _stream(params, facts["output"], source, scratch, ctx, resuming)
            return _result(planned, facts["output"]["subformat"], facts["output"]["virtualSize"], stored.size,
                           stored)
        converted, file_size, stored = _convert(params, facts["output"], source, source_fmt, scratch, ctx, resuming)
    return _result(planned, converted.subformat, converted.virtual_size, file_size, stored)


def _resuming(params: Params, facts: dict, held) -> dict:
    """upload()'s resume arguments for an output on a share (none for a local one)."""
    if not params.outputStorageLocation:
        return {}
    from ce.smb.resume import upload_options
    out = facts["output"]
    return upload_options(_resume_key(params, facts["source"]["format"], out["format"], out["subformat"], held),
                          params.resume)


def _open_source(params: Params, facts: dict, scratch, remote: contextlib.ExitStack) -> tuple:
    """(path, format) qemu-img reads: the local source, or a qcow2 overlay over the share's file served in place."""
    if params.source:
        return params.source, facts["format"]
    where, name = params.inputStorageLocation, params.inputImageFilename
    export = remote.enter_context(nbdexport.serving(where, name, scratch))
    if export.size != facts["fileSize"]:
        raise ImageChangedSincePlan(f"{where.location}\\{name} changed on the share since the plan: run the step again")
    overlay = scratch / "source.qcow2"
    disks.create_overlay(export.uri, facts["format"], overlay, facts["virtualSize"])
    return overlay, "qcow2"


def _stream(params: Params, out: dict, source, scratch, ctx: StepContext, resuming: dict):
    fmt = disks.qemu_format(out["format"])
    layout = layouts.make(fmt, out["subformat"], out["virtualSize"], scratch)
    verify = functools.partial(nbdexport.verify, scratch, fmt, out["subformat"], out["virtualSize"],
                               f"{out['location']}\\{out['name']}")
    with params.outputStorageLocation.step_share(ctx.held) as share:
        return share.upload(source, params.outputImageFilename, overwrite=params.overwriteOutput, cancel=ctx.stop,
                            layout=layout, verify=verify,
                            progress=ctx.band(0, 100, "streaming into the container", unit="bytes"), **resuming)


def _convert(params: Params, out: dict, source, source_fmt: str, scratch, ctx: StepContext, resuming: dict) -> tuple:
    """qemu-img (or a container fill) into the local output, or into scratch space and then up to the share."""
    bands = _bands(params)
    local = params.output or scratch / "output"
    converted = disks.convert(source, local, out["format"], src_fmt=source_fmt, subformat=out["subformat"],
                              azure_fixed=params.azureFixed, overwrite=params.overwriteOutput, cancel=ctx.stop,
                              durable=params.output is not None,      # a scratch file is not kept
                              progress=ctx.band(*bands["convert"], "converting", size=out["virtualSize"]))
    if not params.outputStorageLocation:
        return converted, os.path.getsize(local), None
    # a connection of its own: the plan's may have idled out on the server during a long local conversion
    with params.outputStorageLocation.share() as share:
        stored = share.upload(local, params.outputImageFilename, overwrite=params.overwriteOutput, cancel=ctx.stop,
                              progress=ctx.band(*bands["upload"], "uploading", unit="bytes"), **resuming)
    return converted, stored.size, stored


def _result(planned: Plan, subformat: str | None, virtual_size: int, file_size: int, stored) -> Result:
    """``stored``: the file on the share (None for a local output), with the bytes sent, reused and read back."""
    output = {**planned.facts["output"], "subformat": subformat, "virtualSize": virtual_size, "fileSize": file_size}
    sent = {"bytesSent": getattr(stored, "sent", None), "bytesReused": getattr(stored, "reused", None),
            "bytesChecked": getattr(stored, "checked", None)}
    return Result.of(planned, facts={**planned.facts, "output": output, **sent})


def _bands(params: Params) -> dict:
    upload = 60 if params.outputStorageLocation else 100
    return {"convert": (0, upload), "upload": (upload, 100)}


def describe(document: Plan | Result) -> list[str]:
    output = document.facts["output"]
    if isinstance(document, Plan):
        return _resume_lines(document.facts)
    reused = document.facts.get("bytesReused")
    return [f"virtual size {human_size(output['virtualSize'])}, file {human_size(output['fileSize'])}, "
            f"{document.seconds:.1f} s" + (f" ({human_size(reused)} already there, reused)" if reused else "")]


def _resume_lines(facts: dict) -> list[str]:
    if not facts.get("resume"):
        return []
    from ce.smb.resume import plan_lines
    return plan_lines(facts["resume"], facts["output"]["name"])


# ---------------------------------------------------------------- command line

def arguments(p) -> None:
    p.add_argument("source", help=r"disk file, block device, or an SMB file \\host\share\folder\disk.vhdx")
    p.add_argument("output", help="output file, local or on SMB")
    p.add_argument("-O", "--format", required=True, choices=("raw", "qcow2", "vhd", "vhdx", "vmdk"),
                   type=str.lower, help="the output's format (-O as in qemu-img convert)")
    p.add_argument("--subformat", help="vhd/vhdx: dynamic|fixed; vmdk: monolithicSparse|streamOptimized")
    p.add_argument("--source-format", help="source format when probing must not decide")
    p.add_argument("--azure-fixed", action="store_true", help="fixed VHD rounded up to a whole MiB (Azure)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-resume", action="store_true",
                   help="output on SMB: start over even if an earlier attempt left NAME.partial (resume: false)")


def cli_params(args) -> dict:
    params = {"outputFormat": args.format, "subformat": args.subformat, "azureFixed": args.azure_fixed,
              "overwriteOutput": args.overwrite, "sourceFormat": args.source_format, "resume": not args.no_resume}
    if is_smb(args.source):
        folder, name = split_file(args.source)
        params.update(inputStorageLocation=storage(args, folder), inputImageFilename=name)
    else:
        params["source"] = args.source
    if is_smb(args.output):
        folder, name = split_file(args.output)
        params.update(outputStorageLocation=storage(args, folder), outputImageFilename=name)
    else:
        params["output"] = args.output
    return params


STEP = StepType(name=NAME, Facts=Facts, summary="convert a disk between raw, qcow2, vhd, vhdx and vmdk, locally or on SMB",
                Params=Params, plan=plan, apply=apply, disk_params=("source", "output"),
                error_groups=("disk", "smb", "step"), validate=validate,
                describe=describe, cli=CliSpec("convert", "convert a disk between raw, qcow2, vhd, vhdx and vmdk "
                                                          "(local or SMB)", arguments, cli_params, flags={
                    "source": "SOURCE", "inputImageFilename": "SOURCE", "output": "OUTPUT", "outputImageFilename":
                    "OUTPUT", "outputFormat": "--format", "subformat": "--subformat", "sourceFormat": "--source-format",
                    "azureFixed": "--azure-fixed", "overwriteOutput": "--overwrite", "resume": "--no-resume",
                    **location_flags("inputStorageLocation", "SOURCE"),
                    **location_flags("outputStorageLocation", "OUTPUT")}))
