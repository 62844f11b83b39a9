"""A disk -> a VHDX or VHD file on an SMB share: what export and publish (and prepareAndPublish's second half) do.

qemu-img cannot write to SMB. A raw disk -- an attached block device, or a raw file -- is streamed: its non-zero
chunks go straight to their places inside the VHDX / VHD on the share, and the container's metadata, made by
``qemu-img create`` in scratch space and filled in by ce.layouts, follows them; the disk is read once and nothing
of its size is written locally. Any other source format is first converted into a local scratch file, which is
then uploaded with its holes skipped. Either way the share sees ``NAME.partial``, renamed to ``NAME`` once its
size is verified (and, for a streamed container, once qemu-img has read it back over NBD).

An earlier attempt of the same job that lost its connection or its process leaves ``NAME.partial`` and its
record (``ce.smb.resume``): unless ``resume`` is off, the next attempt reads back what is there as it streams and
sends only what is missing or different. The plan says whether it will, and how much is there; the result counts
the bytes sent and the bytes reused.

Checked before any work, in this order: the disk is readable; the share accepts the account; the name is free (or
``overwrite``); the share has at least twice the disk's virtual size free (the service's rule; a stale
``NAME.partial`` of an earlier attempt counts as free); the local scratch directory can hold what the method needs.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from . import disks, hashing, nbdexport, staging
from .disks import layouts
from .changes import DiskWrite, Plan, Result
from .document import Facts
from .errors import RemoteExists, ShareFull
from .sizes import human_size, mib
from .smb.target import StorageLocation
from .step import StepContext

if TYPE_CHECKING:                        # the SMB byte path is imported when a write starts, not with the step types
    from .smb import RemoteStat
    from .smb.resume import ResumeKey

STREAM_SCRATCH = 16 << 20              # the empty container (fixed ones are sparse files)
SPACE_FACTOR = 2                      # the service's rule: free space >= twice the image's virtual size
FORMATS = {"vhdx": "vhdx", "vhd": "vpc"}


PVP_STATES = {"kept": "kept as it is",
              "none": "none: add the vDisk in the PVS console (Stores > Add or Import Existing vDisk)"}


class SourceFacts(Facts):
    path: str
    format: str
    subformat: str | None = None
    virtualSize: int
    actualSize: int | None = None
    isBlockDevice: bool = False


class TargetFacts(Facts):
    """The file written on the share; ``fileSize`` / ``allocatedOnShare`` once it is; publish adds the vDisk's."""
    location: str
    name: str
    path: str
    format: str
    subformat: str | None = None
    virtualSize: int
    replacesExisting: bool
    method: Literal["stream", "convert_then_upload"]
    fileSize: int | None = None
    allocatedOnShare: int | None = None
    vDiskName: str | None = None
    pvp: Literal["kept", "none"] | None = None     # the vDisk's PVS properties file: kept as it is, or none yet


class ResumeFacts(Facts):
    """An upload's earlier attempt (ce.smb.resume.plan_facts): none, this job's and source's, or another's; the data
    its NAME.partial holds; whether this attempt resumes it."""
    enabled: bool
    earlier: Literal["none", "same_job", "other_job"]
    partialAllocated: int
    resumes: bool


class SpaceFacts(Facts):
    shareFree: int
    shareTotal: int
    required: int


class ExportFacts(Facts):
    """The facts of an export or publish: the plan's, then what the write measured (bytes*, hashes)."""
    source: SourceFacts
    target: TargetFacts
    space: SpaceFacts
    resume: ResumeFacts
    scratch: staging.ScratchFacts
    hash: list[str] | None = None           # the algorithms the write hashes with, when asked
    bytesSent: int | None = None
    bytesReused: int | None = None
    bytesChecked: int | None = None
    hashes: dict[str, str] | None = None


@dataclass(frozen=True)
class Export:
    """One export's inputs, in the words of whichever step asks for it."""
    disk: str
    location: StorageLocation
    name: str                          # the file name on the share, extension included
    format: str                        # vhdx | vhd
    subformat: str                     # dynamic | fixed
    overwrite: bool
    hash: bool
    overwrite_field: str               # the param a user sets to replace an existing file
    name_field: str                    # the param naming the file
    resume: bool = True                # reuse what an earlier attempt of the same job left in NAME.partial

    def resume_key(self, source_format: str) -> ResumeKey:
        from .smb.resume import job_key, key_for
        job = job_key(self.disk, str(self.location.location), self.name, self.format, self.subformat)
        return key_for(self.disk, source_format, f"{self.format} {self.subformat}", job)


def plan(job: Export, held: contextlib.ExitStack | None = None) -> tuple[DiskWrite, dict]:
    """(the write, the facts): source facts, target, share space, scratch space -- from reads only. Given the
    step's ``ctx.held``, the connection to the share stays open for the write."""
    source = disks.info(job.disk)
    disks.refuse_differencing(source)
    from .smb.resume import survey_facts
    with job.location.step_share(held) as share:
        survey = share.survey(job.name)          # one round trip: the name, the space, an earlier attempt
    existing = _existing(survey.final, job)
    free, total = survey.free, survey.total
    resume = survey_facts(survey, job.resume_key(source_facts(source)["format"]), job.resume)
    stale = resume["partialAllocated"]
    required = SPACE_FACTOR * source.virtual_size
    if free + (existing or 0) + stale < required:
        raise ShareFull(f"{job.location.location} has {mib(free)} free but exporting a {mib(source.virtual_size)} "
                        f"disk needs {mib(required)} (twice its virtual size); free space on the share or choose "
                        "another location")
    streams = layouts.streamable(source, FORMATS[job.format], job.subformat)
    needed = STREAM_SCRATCH if streams else staging.output_estimate(source, job.format, job.subformat)
    scratch = staging.require_scratch(needed, f"exporting {job.disk} as {job.format.upper()}")
    path = f"{job.location.location}\\{job.name}"
    write = DiskWrite(target=path, format=job.format, subformat=job.subformat, virtual_size=source.virtual_size,
                      source=job.disk, method="stream" if streams else "convert_then_upload",
                      replaces_existing=existing is not None)
    facts = {"source": source_facts(source),
             "target": {"location": str(job.location.location), "name": job.name, "path": path,
                        "format": job.format, "subformat": job.subformat, "virtualSize": source.virtual_size,
                        "replacesExisting": existing is not None, "method": write.method},
             "space": {"shareFree": free, "shareTotal": total, "required": required},
             "resume": resume,
             "scratch": scratch,
             "hash": list(hashing.ALGORITHMS) if job.hash else None}
    return write, facts


def _existing(found: RemoteStat | None, job: Export) -> int | None:
    """The allocated size of the file ``found`` at the name (None when there is none); refused unless overwrite."""
    if found is None:
        return None
    if found.is_dir:
        raise RemoteExists(f"{job.location.location}\\{job.name} is a folder: choose another {job.name_field}")
    if not job.overwrite:
        raise RemoteExists(f"{job.location.location}\\{job.name} already exists: set {job.overwrite_field} to "
                           f"replace it or choose another {job.name_field}")
    return found.allocated


def source_facts(source: disks.DiskInfo) -> dict:
    return {"path": source.path, "format": disks.FORMAT_LABELS[source.format].lower(),
            "subformat": source.subformat, "virtualSize": source.virtual_size,
            "actualSize": source.actual_size, "isBlockDevice": source.is_block_device}


# ---------------------------------------------------------------- writing

def write(job: Export, write: DiskWrite, facts: dict, ctx: StepContext) -> dict:
    """Perform the planned write; returns the facts measured (file size, bytes sent, hashes)."""
    streaming = write.method == "stream"
    hashes = None
    with contextlib.ExitStack() as stack:
        start, hasher = 0.0, None
        if job.hash and streaming:          # the stream reads every byte anyway: hash in the same pass
            hasher = stack.enter_context(hashing.ContentHasher(job.disk, write.virtual_size))
        elif job.hash:
            digest = hashing.hash_disk(job.disk, progress=ctx.band(0, 30, "hashing the disk", unit="bytes"),
                                       cancel=ctx.stop)
            hashes, start = digest.hashes, 30.0
        with staging.scratch_dir("export") as scratch:
            if streaming:
                stored = _stream(job, scratch, write, ctx, hasher, _resume(job, facts))
            else:
                stored = _convert_and_upload(job, scratch, write, ctx, start, _resume(job, facts))
        if hasher is not None:
            hashes = hasher.finish().hashes
    return {**facts, "target": {**facts["target"], "fileSize": stored.size, "allocatedOnShare": stored.allocated},
            "bytesSent": stored.sent, "bytesReused": stored.reused, "bytesChecked": stored.checked,
            "hashes": hashes}


def _resume(job: Export, facts: dict) -> dict:
    from .smb.resume import upload_options
    return upload_options(job.resume_key(facts["source"]["format"]), job.resume)


def _stream(job: Export, scratch: Path, write: DiskWrite, ctx: StepContext, hasher, resuming: dict) -> RemoteStat:
    fmt = FORMATS[job.format]
    layout = layouts.make(fmt, job.subformat, write.virtual_size, scratch)
    doing = f"streaming the disk into {job.name}" + (" and hashing it" if hasher else "")
    with job.location.step_share(ctx.held) as share:
        return share.upload(job.disk, job.name, overwrite=job.overwrite, cancel=ctx.stop, layout=layout,
                            tap=hasher.feed if hasher else None,
                            verify=functools.partial(nbdexport.verify, scratch, fmt, job.subformat,
                                                     write.virtual_size, write.target),
                            progress=ctx.band(0, 100, doing, unit="bytes"), **resuming)


def _convert_and_upload(job: Export, scratch: Path, write: DiskWrite, ctx: StepContext, start: float,
                        resuming: dict) -> RemoteStat:
    upload_from = start + (100 - start) * 0.35
    local = scratch / "disk"
    disks.convert(job.disk, local, job.format, subformat=job.subformat, durable=False, cancel=ctx.stop,
                  progress=ctx.band(start, upload_from, f"converting to {job.format.upper()}",
                                    size=write.virtual_size))
    with job.location.step_share(ctx.held) as share:
        return share.upload(local, job.name, overwrite=job.overwrite, cancel=ctx.stop,
                            progress=ctx.band(upload_from, 100, f"uploading {job.name}", unit="bytes"),
                            **resuming)


def describe(document: Plan | Result) -> list[str]:
    """Lines for people beyond the write itself: space and scratch before; size, bytes sent and hashes after."""
    facts = document.facts
    if isinstance(document, Plan):
        return [f"share free {human_size(facts['space']['shareFree'])}, needs "
                f"{human_size(facts['space']['required'])}; scratch {facts['scratch']['directory']}",
                *_resume_lines(facts)]
    reused = f" ({human_size(facts['bytesReused'])} already there, reused)" if facts.get("bytesReused") else ""
    lines = [f"file {human_size(facts['target']['fileSize'])}, {human_size(facts['bytesSent'] or 0)} sent{reused} "
             f"in {document.seconds:.1f} s"]
    if facts["target"].get("pvp"):
        lines.append(f"PVS properties (.pvp): {PVP_STATES[facts['target']['pvp']]}")
    return lines + [f"{algorithm:<7} {value}" for algorithm, value in (facts.get("hashes") or {}).items()]


def _resume_lines(facts: dict) -> list[str]:
    from .smb.resume import plan_lines
    return plan_lines(facts.get("resume"), facts["target"]["name"])
