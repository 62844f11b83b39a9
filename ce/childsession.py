r"""The session of a step that edits Windows inside a PVS vDisk on a share and writes the edits as a differencing
child beside it (convertToUefi, upgradePvs): the service's params, the checks that need no launch, one launch on a
local overlay of the parent (``ce.sharechild``), and after the apply the child written, uploaded and verified.

    session = open_child_session(params, ctx, name=NAME, extra_bytes=grow)   # plan: parent, overlay, guest
    ... plan changes with session.windows (a ce.windows.WindowsSession) ...
    result = apply_child_session(session, planned, ctx, virtual_size=...)   # apply: guest edits, then the child

The parent is opened read-only; the guest edits only the overlay; the child goes to ``NAME.partial`` and is renamed
when it reads back right on the share (ce.sharechild). A failure anywhere leaves the parent as it was and nothing
at the output name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from . import staging, windows
from .changes import DiskWrite, Plan, Result
from .document import Facts
from .plan import CommitFacts
from .errors import ImageChangedSincePlan, InvalidParams, RemoteExists, UnsupportedFormat
from .sharechild import CHILD_EXTENSIONS, ShareParent, opened_parent
from .smb.target import StorageLocation
from .step import StepContext, StepParams

FORMATS = {"VhdxDiskFormat": "vhdx", "VhdDiskFormat": "vpc"}
BY_EXTENSION = {ext: fmt for fmt, exts in CHILD_EXTENSIONS.items() for ext in exts}
OVERLAY_NAME = "edits.qcow2"
MiB = 1 << 20


class ChildParams(StepParams):
    """The service's params of a vDisk job whose output is a differencing child of its input."""
    inputStorageLocation: StorageLocation = Field(description="the PVS store folder holding the vDisk")
    inputImageFilename: str = Field(min_length=1, max_length=255, description="the vDisk (VHDX or VHD) in the folder")
    inputImageFormat: Literal["VhdxDiskFormat", "VhdDiskFormat"] | None = Field(
        None, description="default: from the file's extension")
    outputImageFilename: str = Field(min_length=1, max_length=255, description="the child, written beside the "
                                     "input (.vhdx / .avhdx for a VHDX input, .vhd / .avhd for a VHD one)")
    overwriteOutput: bool = False


def validate_names(params: ChildParams) -> str:
    """Both names are plain file names in the location's folder (the child names its parent as .\\NAME); returns
    the expected format."""
    for field in ("inputImageFilename", "outputImageFilename"):
        name = getattr(params, field)
        if any(c in name for c in '\\/:*?"<>|') or name.strip(" .") != name or name in (".", ".."):
            raise InvalidParams(f"params.{field} {name!r} must be a plain file name in the location's folder (the "
                                "child is written beside its parent and names it .\\NAME)", field=field)
    if params.inputImageFilename.lower() == params.outputImageFilename.lower():
        raise InvalidParams("params.outputImageFilename names the input itself: the input is never written",
                            field="outputImageFilename")
    fmt = FORMATS.get(params.inputImageFormat) or BY_EXTENSION.get(Path(params.inputImageFilename).suffix.lower())
    if fmt is None:
        raise InvalidParams(f"cannot tell the format of {params.inputImageFilename!r} from its extension: give "
                            "params.inputImageFormat", field="inputImageFormat")
    if Path(params.outputImageFilename).suffix.lower() not in CHILD_EXTENSIONS[fmt]:
        raise InvalidParams(f"params.outputImageFilename must end in {' or '.join(CHILD_EXTENSIONS[fmt])}: a "
                            f"child has its parent's format", field="outputImageFilename")
    return fmt


class ChildFacts(Facts):
    """The differencing child written beside the parent on the share."""
    name: str
    format: str
    virtualSize: int
    fileSize: int
    sha256: str
    bytesSent: int
    blockSize: int
    blocks: dict[str, int]              # blocks per state in the child's block table
    dataBytes: int
    identifier: str
    parentLocator: dict[str, str]       # the format's own locator entries (VHDX: relative_path, ...)


class ParentFacts(Facts):
    name: str
    virtualSize: int
    identifier: str


class ChildStepFacts(Facts):
    """What a child step's documents share: the child and its parent, and the hives committed in the overlay."""
    child: ChildFacts | None = None
    parent: ParentFacts | None = None
    commits: list[CommitFacts] | None = None


@dataclass
class ChildSession:
    params: ChildParams
    parent: ShareParent
    overlay: Path
    scratch: Path
    windows: windows.WindowsSession
    overlay_size: int

    @property
    def sector_size(self) -> int:
        return self.parent.facts.logical_sector

    @property
    def can_grow(self) -> bool:
        """A VHDX child may be larger than its parent; Windows refuses a VHD child of another size."""
        return self.parent.facts.format == "vhdx"


def open_child_session(params: ChildParams, ctx: StepContext, *, name: str, extra_bytes: int = 0,
                       size: int | None = None, before_launch=None) -> ChildSession:
    """Open the parent on the share, refuse an existing output (unless ``overwriteOutput``), make the overlay --
    ``size`` bytes, or ``extra_bytes`` larger than the parent when the format allows -- and launch the guest on it
    (writable unless a dry run), all held open for the apply. ``before_launch(parent, overlay)`` may refuse the
    job from the disk's bytes first."""
    fmt = validate_names(params)
    scratch = Path(ctx.held.enter_context(staging.scratch_dir(name)))
    ctx.progress(1, "opening the vDisk on the share")
    parent = ctx.held.enter_context(opened_parent(params.inputStorageLocation, params.inputImageFilename, scratch))
    if parent.facts.format != fmt:
        raise UnsupportedFormat(f"{params.inputImageFilename} is a {parent.facts.format} file, not {fmt}")
    if not params.overwriteOutput and parent.share.exists(params.outputImageFilename):
        raise RemoteExists(f"{params.outputImageFilename!r} already exists in {parent.share.location}: set "
                           "overwriteOutput or choose another outputImageFilename")
    size = overlay_size(parent, extra_bytes, size)
    overlay = parent.overlay(scratch / OVERLAY_NAME, size)
    if before_launch:
        before_launch(parent, overlay)             # refusals that need only the disk's bytes, before a launch
    session = windows.open_session(os.fspath(overlay), root=None, timeout=params.timeout, dry_run=params.dryRun,
                                   name=name, ctx=ctx, held=ctx.held)
    return ChildSession(params, parent, overlay, scratch, session, size)


def overlay_size(parent: ShareParent, extra_bytes: int, size: int | None) -> int:
    virtual = parent.facts.virtual_size
    if size is None:
        return virtual + (extra_bytes if parent.facts.format == "vhdx" else 0)
    if size < virtual or (parent.facts.format == "vpc" and size != virtual):
        raise InvalidParams(f"params.outputSizeMb ({size >> 20} MiB) must be at least the vDisk's size "
                            f"({-(-virtual // MiB)} MiB)" + (" and, for a VHD, equal to it" if parent.facts.format
                                                              == "vpc" else ""), field="outputSizeMb")
    if size % parent.facts.logical_sector:
        raise InvalidParams(f"params.outputSizeMb gives {size} bytes, not a whole number of "
                            f"{parent.facts.logical_sector}-byte sectors", field="outputSizeMb")
    return size


def child_write(session: ChildSession, virtual_size: int) -> DiskWrite:
    """The plan's line for the child: where it goes and how large its disk is."""
    p = session.params
    return DiskWrite(target=p.inputStorageLocation.describe(p.outputImageFilename),
                     source=p.inputStorageLocation.describe(p.inputImageFilename), format=session.parent.facts.format,
                     virtual_size=virtual_size, method="differencing_child",
                     replaces_existing=session.parent.share.exists(p.outputImageFilename))


def apply_child_session(session: ChildSession, planned: Plan, ctx: StepContext, *, virtual_size: int) -> Result:
    """The guest changes on the overlay, then the child of ``virtual_size`` bytes written and uploaded; the result
    carries the plan's facts too. A failed guest change stops before anything reaches the share."""
    result = windows.apply_session(session.windows, planned, ctx)
    result.facts = {**planned.facts, **result.facts}          # what the plan decided, then what the apply did
    if result.error:
        return result
    session.windows.guest.close()                  # flushes the overlay; qemu-nbd may then read it
    if not session.parent.unchanged():
        raise ImageChangedSincePlan(f"{session.params.inputImageFilename} changed on the share during the step; "
                                    "nothing was written there")
    ctx.progress(80, "writing the differencing child")
    child = session.parent.write_child(session.overlay, session.scratch / "child", session.params.outputImageFilename,
                                       virtual_size=virtual_size)
    stored = session.parent.upload_child(child, session.params.outputImageFilename,
                                         overwrite=session.params.overwriteOutput, cancel=ctx.stop,
                                         progress=ctx.band(90, 100, "uploading the child to the share", unit="bytes"))
    result.facts["child"] = {"name": session.params.outputImageFilename, "format": session.parent.facts.format,
                             "virtualSize": virtual_size, "fileSize": stored.size, "sha256": child.sha256,
                             "bytesSent": stored.sent, "blockSize": child.summary.block_size, "blocks": child.summary.blocks,
                             "dataBytes": child.summary.data_bytes, "identifier": child.summary.identifier,
                             "parentLocator": child.summary.parent_locator}
    result.facts["parent"] = {"name": session.params.inputImageFilename, "virtualSize":
                              session.parent.facts.virtual_size, "identifier": session.parent.facts.identifier_text}
    return result
