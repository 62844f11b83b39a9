"""diagnostics: ce's own logs and the image's event logs and data -> one zip file on an SMB share, the disk unchanged.

The work is ce.diagnostics' (one read-only appliance, byte-identical copies with a manifest, caps, the summary, the
zip uploaded as ``NAME.partial`` and renamed); this module holds the service's parameters (``outputStorageLocation``,
``ceLogs``, ``windowsEventLogs``, ``ipsData``), the file-name rule and the command line.
"""
from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from ce import diagnostics, logs, smb, staging
from ce.diskexport import SpaceFacts
from ce.document import Facts as FactsBase
from ce.changes import Plan, Result
from ce.cli.smbargs import location_flags, storage
from ce.errors import InvalidParams, naming_field
from ce.smb.target import StorageLocation
from ce.step import CliSpec, StepContext, StepParams, StepType

NAME = "diagnostics"
MiB = 1 << 20


def default_name() -> str:
    return time.strftime("ce-diagnostics-%Y%m%dT%H%M%SZ.zip", time.gmtime())


class Params(StepParams):
    disk: str | None = Field(None, description="the attached disk to read (read-only); needed for windowsEventLogs "
                                               "and ipsData")
    outputStorageLocation: StorageLocation
    ceLogs: bool = Field(True, description="ce's side: the step store's documents and logs, the service journal")
    windowsEventLogs: bool = Field(True, description="the image's event logs (.evtx) and setup / servicing / "
                                                     "driver logs, minidumps")
    ipsData: bool = Field(True, description="what ce left in the image: first-boot plan / state / log, its backups")
    fileName: str = Field(default_factory=default_name, min_length=1, max_length=200,
                          description="the zip's name on the share (default ce-diagnostics-<UTC time>.zip); .zip is "
                                      "added when missing")
    maxFileMb: int = Field(512, ge=1, le=65536, description="per-file cap: a text log over it keeps its newest "
                                                            "part, any other file is left out (manifest says so)")
    maxBundleMb: int = Field(4096, ge=8, le=1048576, description="cap on the bundle's uncompressed size")
    root: str | None = Field(None, description="Windows root device when the disk holds several, e.g. /dev/sda3")


def file_name(params: Params) -> str:
    name = params.fileName
    if "\\" in smb.normalize_path(name):         # refuses '..', absolute and UNC paths, device names first
        raise InvalidParams(f"params.fileName {name!r} must be a file name, not a path: put the folder in "
                            "outputStorageLocation.Location", field="fileName")
    return name if name.lower().endswith(".zip") else name + ".zip"


def validate(params: Params) -> None:
    with naming_field("fileName"):
        file_name(params)
    if not (params.ceLogs or params.windowsEventLogs or params.ipsData):
        raise InvalidParams("params: ceLogs, windowsEventLogs and ipsData are all false: nothing to collect",
                            field="ceLogs")
    if (params.windowsEventLogs or params.ipsData) and not params.disk:
        raise InvalidParams("params.disk is needed to collect windowsEventLogs or ipsData (set both false for ce's "
                            "own logs only)", field="disk")


def job(params: Params) -> diagnostics.Diagnostics:
    return diagnostics.Diagnostics(
        location=params.outputStorageLocation, name=file_name(params), disk=params.disk, ce_logs=params.ceLogs,
        event_logs=params.windowsEventLogs, ips_data=params.ipsData, max_file=params.maxFileMb * MiB,
        max_bundle=params.maxBundleMb * MiB, timeout=params.timeout, root=params.root,
        secrets=tuple(logs.secret_values(params)))


def plan(params: Params, ctx: StepContext) -> Plan:
    return diagnostics.plan(job(params), ctx)


def apply(params: Params, planned: Plan, ctx: StepContext) -> Result:
    return Result.of(planned, facts=diagnostics.write(job(params), planned, ctx))


# ---------------------------------------------------------------- command line

def arguments(p) -> None:
    p.add_argument("disk", help="disk file or block device to read (read-only)")
    p.add_argument("location", help=r"SMB folder: \\host\share\folder")
    p.add_argument("--name", help="the zip's file name (default ce-diagnostics-<UTC time>.zip)")
    p.add_argument("--no-ce-logs", action="store_true", help="leave out ce's own side (ceLogs)")
    p.add_argument("--no-event-logs", action="store_true", help="leave out the image's logs (windowsEventLogs)")
    p.add_argument("--no-ips-data", action="store_true", help="leave out ce's files in the image (ipsData)")
    p.add_argument("--max-file-mb", type=int, help="per-file cap in MiB (default 512)")
    p.add_argument("--max-bundle-mb", type=int, help="bundle cap in MiB, uncompressed (default 4096)")
    p.add_argument("--root", help="Windows root device when the disk holds several")


def cli_params(args) -> dict:
    return {"disk": args.disk, "outputStorageLocation": storage(args, args.location), "fileName": args.name,
            "ceLogs": not args.no_ce_logs, "windowsEventLogs": not args.no_event_logs,
            "ipsData": not args.no_ips_data, "maxFileMb": args.max_file_mb, "maxBundleMb": args.max_bundle_mb,
            "root": args.root}


class TargetFacts(FactsBase):
    location: str
    name: str
    path: str
    fileSize: int | None = None


class CapsFacts(FactsBase):
    maxFileBytes: int
    maxBundleBytes: int


class BundleFacts(FactsBase):
    members: int
    bytes: int                             # uncompressed
    compressed: int
    cut: list[str]                         # members a cap shortened
    leftOut: int


class Facts(FactsBase):
    """The bundle planned (sources to collect and to leave out, caps, space) and, after a run, as written."""
    target: TargetFacts
    collect: list[dict[str, Any]]          # the manifest's rows of what goes in
    leftOut: list[dict[str, Any]]          # sources left out, with why
    ce: dict[str, Any]                     # ce's own side: steps, journal, files, bytes
    diskState: list[dict[str, Any]] | None = None   # the image's filesystems as read (when the image is read)
    inspectFailure: Any = None             # why inspecting the image failed, when it did
    caps: CapsFacts
    space: SpaceFacts
    scratch: staging.ScratchFacts
    bundle: BundleFacts | None = None
    buildSeconds: float | None = None
    uploadSeconds: float | None = None


STEP = StepType(name=NAME, Facts=Facts, summary="ce's logs and the image's event logs and data -> a zip file on an SMB share "
                "(the disk is only read)", Params=Params, plan=plan, apply=apply, disk_params=("disk",),
                error_groups=("diagnostics", "disk", "guest", "smb", "step"), validate=validate,
                describe=diagnostics.describe,
                cli=CliSpec("diagnostics", "collect logs and data into a zip file on an SMB share", arguments,
                            cli_params, flags={"disk": "DISK", "fileName": "--name", "ceLogs": "--no-ce-logs",
                                               "windowsEventLogs": "--no-event-logs", "ipsData": "--no-ips-data",
                                               "maxFileMb": "--max-file-mb", "maxBundleMb": "--max-bundle-mb",
                                               "root": "--root",
                                               **location_flags("outputStorageLocation", "LOCATION")}))
