"""export: the attached disk -> a VHDX (default) or VHD file on an SMB share, optionally with its md5 / sha256.

The work is ce.diskexport's (a raw disk streamed into the container on the share, other formats converted in
scratch space first, ``NAME.partial`` renamed once verified, the twice-the-size space rule); this module holds the
service's parameters, the file-name rule and the command line.
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from ce import diskexport, smb
from ce.changes import Plan, Result
from ce.cli.smbargs import FORMAT_NAMES, location_flags, storage
from ce.errors import InvalidParams, naming_field
from ce.smb.target import StorageLocation
from ce.step import CliSpec, StepContext, StepParams, StepType

NAME = "export"
FORMATS = {"VhdxDiskFormat": ("vhdx", ".vhdx"), "VhdDiskFormat": ("vhd", ".vhd")}
DISK_EXTENSIONS = (".vhdx", ".vhd", ".avhdx", ".avhd", ".vmdk", ".qcow2", ".raw", ".img")


class Params(StepParams):
    disk: str = Field(description="the attached source disk: disk file (raw, qcow2, vhd, vhdx, vmdk) or block device")
    outputStorageLocation: StorageLocation
    SmbDiskName: str = Field(min_length=1, max_length=200,
                             description="file name on the share; the format's extension is added when missing")
    SmbDiskFormat: Literal["VhdxDiskFormat", "VhdDiskFormat"] = "VhdxDiskFormat"
    SmbDiskSubformat: Literal["dynamic", "fixed"] = Field("dynamic", description="dynamic (sparse) or fixed")
    overwriteTargetFile: bool = False
    hashDisk: bool = Field(False, description="return the md5 and sha256 of the disk's contents in the result")
    resume: bool = Field(True, description="continue what an earlier attempt of the same job and disk left in "
                                           "NAME.partial on the share (read back and checked; only what is missing "
                                           "or different is sent); false starts over")


def file_name(params: Params) -> str:
    """SmbDiskName with the format's extension; a name with another disk extension is refused."""
    _, extension = FORMATS[params.SmbDiskFormat]
    name = params.SmbDiskName
    if "\\" in smb.normalize_path(name):         # refuses '..', absolute and UNC paths, device names first
        raise InvalidParams(f"params.SmbDiskName {name!r} must be a file name, not a path: put the folder in "
                            "outputStorageLocation.Location", field="SmbDiskName")
    lowered = name.lower()
    if lowered.endswith(extension):
        return name
    other = next((e for e in DISK_EXTENSIONS if lowered.endswith(e)), None)
    if other:
        raise InvalidParams(f"params.SmbDiskName {name!r} ends with {other} but SmbDiskFormat is "
                            f"{params.SmbDiskFormat}: use a {extension} name or change the format", field="SmbDiskName")
    return name + extension


def validate(params: Params) -> None:
    with naming_field("SmbDiskName"):
        file_name(params)


def job(params: Params) -> diskexport.Export:
    return diskexport.Export(disk=params.disk, location=params.outputStorageLocation, name=file_name(params),
                             format=FORMATS[params.SmbDiskFormat][0], subformat=params.SmbDiskSubformat,
                             overwrite=params.overwriteTargetFile, hash=params.hashDisk,
                             overwrite_field="overwriteTargetFile", resume=params.resume, name_field="SmbDiskName")


def plan(params: Params, ctx: StepContext) -> Plan:
    write, facts = diskexport.plan(job(params), ctx.held)
    return Plan(step=NAME, changes=[write], facts=facts)


def apply(params: Params, planned: Plan, ctx: StepContext) -> Result:
    facts = diskexport.write(job(params), planned.changes[0], planned.facts, ctx)
    return Result.of(planned, facts=facts)


# ---------------------------------------------------------------- command line

def arguments(p) -> None:
    p.add_argument("disk", help="disk file or block device")
    p.add_argument("location", help=r"SMB folder: \\host\share\folder")
    p.add_argument("--name", help="file name on the share (default: the disk's name); the extension is added")
    p.add_argument("--format", choices=tuple(FORMAT_NAMES), default="vhdx", type=str.lower, help="the file's format")
    p.add_argument("--fixed", action="store_true", help="a fixed (fully allocated) VHD(X) instead of dynamic")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file (overwriteTargetFile)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if an earlier attempt left NAME.partial (resume: false)")
    p.add_argument("--hash", action="store_true", help="also return the md5 and sha256 of the disk (hashDisk)")


def cli_params(args) -> dict:
    name = args.name or os.path.splitext(os.path.basename(args.disk.rstrip("/")))[0]
    return {"disk": args.disk, "outputStorageLocation": storage(args, args.location), "SmbDiskName": name,
            "SmbDiskFormat": FORMAT_NAMES[args.format], "SmbDiskSubformat": "fixed" if args.fixed else "dynamic",
            "overwriteTargetFile": args.overwrite, "hashDisk": args.hash,
            "resume": not args.no_resume}


STEP = StepType(name=NAME, Facts=diskexport.ExportFacts, summary="export the attached disk to a VHDX or VHD file on an SMB share", Params=Params,
                plan=plan, apply=apply, disk_params=("disk",),
                error_groups=("disk", "smb", "step"), validate=validate, describe=diskexport.describe,
                cli=CliSpec("export", "export a disk to a VHDX (or VHD) file on an SMB share", arguments, cli_params,
                            flags={"disk": "DISK", "SmbDiskName": "--name", "SmbDiskFormat": "--format",
                                   "SmbDiskSubformat": "--fixed", "overwriteTargetFile": "--overwrite",
                                   "hashDisk": "--hash", "resume": "--no-resume",
                                   **location_flags("outputStorageLocation", "LOCATION")}))
