"""publish: a prepared disk -> a vDisk (VHDX by default, or VHD) in a Citrix Provisioning (PVS) store on SMB.

Export semantics (ce.diskexport: a raw disk streamed into the container, other formats converted in scratch space
first; sparse upload to ``NAME.partial``, verified rename, the twice-the-size space rule, optional hashes), with PVS
naming and PVS's own files respected:

* ``vDiskName`` is the vDisk's name in the PVS console; the file is ``vDiskName.vhdx`` (or ``.vhd``). The name must
  be a plain Windows file name without dots, so PVS's version files (``NAME.1.avhdx``) cannot be confused with it.
* The ``.pvp`` properties file is written by the PVS console when an administrator adds or imports the vDisk (it
  holds the store's access mode, cache type and licensing that only the PVS farm knows), so ce does not write one;
  an existing ``.pvp`` is left untouched.
* A ``NAME.lok`` file means PVS has the vDisk open: publishing over it is refused, even with overwrite.
* Versions (``NAME.N.avhdx`` / ``.avhd``) are differencing disks chained to the base file: replacing the base would
  corrupt them, so publishing over a vDisk that has versions is refused.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from ce import diskexport
from ce.changes import Plan, Result
from ce.cli.smbargs import FORMAT_NAMES, location_flags, storage
from ce.errors import InvalidParams, RemoteExists, VDiskInUse
from ce.smb.target import StorageLocation
from ce.step import CliSpec, StepContext, StepParams, StepType

NAME = "publish"
VDISK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 _\-()]{0,99}$")
LOCK_SUFFIX = ".lok"
FORMATS = {"VhdxDiskFormat": ("vhdx", ".vhdx"), "VhdDiskFormat": ("vhd", ".vhd")}


class Params(StepParams):
    disk: str = Field(description="the prepared disk: disk file (raw, qcow2, vhd, vhdx, vmdk) or block device")
    outputStorageLocation: StorageLocation = Field(description="the PVS store folder on its SMB share")
    vDiskName: str = Field(min_length=1, max_length=100, description="vDisk name without extension")
    SmbDiskFormat: Literal["VhdxDiskFormat", "VhdDiskFormat"] = "VhdxDiskFormat"
    overwriteTargetFile: bool = False
    hashDisk: bool = False
    resume: bool = Field(True, description="continue what an earlier attempt of the same job and disk left in "
                                           "NAME.partial on the share (read back and checked; only what is missing "
                                           "or different is sent); false starts over")


def validate(params: Params) -> None:
    if not VDISK_NAME.match(params.vDiskName):
        raise InvalidParams(f"params.vDiskName {params.vDiskName!r} is not a usable vDisk name: letters, digits, "
                            "spaces, '-', '_' and parentheses, at most 100, no dots or path separators (PVS adds "
                            "the extension and version numbers itself)", field="vDiskName")


def job(params: Params) -> diskexport.Export:
    fmt, extension = FORMATS[params.SmbDiskFormat]
    return diskexport.Export(disk=params.disk, location=params.outputStorageLocation,
                             name=params.vDiskName + extension, format=fmt, subformat="dynamic",
                             overwrite=params.overwriteTargetFile, hash=params.hashDisk,
                             overwrite_field="overwriteTargetFile", resume=params.resume, name_field="vDiskName")


def plan(params: Params, ctx: StepContext) -> Plan:
    validate(params)
    export = job(params)
    with params.outputStorageLocation.step_share(ctx.held) as share:     # one connection for plan and write
        _refuse_pvs_conflicts(share, params.vDiskName, export.name)
        pvp = share.exists(params.vDiskName + ".pvp")
    write, facts = diskexport.plan(export, ctx.held)
    facts["target"].update(vDiskName=params.vDiskName, pvp="kept" if pvp else "none")
    return Plan(step=NAME, changes=[write], facts=facts)


def _refuse_pvs_conflicts(share, vdisk: str, name: str) -> None:
    if share.exists(vdisk + LOCK_SUFFIX):
        raise VDiskInUse(f"{share.location}\\{vdisk}{LOCK_SUFFIX} exists: PVS has the vDisk open; remove it from "
                         "the targets (or delete the stale lock in the PVS console) and publish again")
    if share.exists(name):
        prefix = vdisk.lower() + "."
        versions = [n for n in share.listdir() if n.lower().startswith(prefix)
                    and n.lower().endswith((".avhdx", ".avhd"))]
        if versions:
            raise RemoteExists(f"{share.location}\\{name} has PVS versions ({', '.join(versions[:3])}): replacing "
                               "the base would break them; merge the versions in the PVS console or choose another "
                               "vDiskName")


def apply(params: Params, planned: Plan, ctx: StepContext) -> Result:
    return Result.of(planned, facts=diskexport.write(job(params), planned.changes[0], planned.facts, ctx))


# ---------------------------------------------------------------- command line

def arguments(p) -> None:
    p.add_argument("disk", help="disk file or block device")
    p.add_argument("store", help=r"the PVS store folder: \\host\share\store")
    p.add_argument("--vdisk", required=True, help="vDisk name (no extension)")
    p.add_argument("--format", choices=tuple(FORMAT_NAMES), default="vhdx", type=str.lower, help="the file's format")
    p.add_argument("--overwrite", action="store_true", help="replace an existing vDisk file")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if an earlier attempt left NAME.partial (resume: false)")
    p.add_argument("--hash", action="store_true", help="also return the md5 and sha256 of the disk")


def cli_params(args) -> dict:
    return {"disk": args.disk, "outputStorageLocation": storage(args, args.store), "vDiskName": args.vdisk,
            "SmbDiskFormat": FORMAT_NAMES[args.format], "overwriteTargetFile": args.overwrite, "hashDisk": args.hash,
            "resume": not args.no_resume}


STEP = StepType(name=NAME, Facts=diskexport.ExportFacts, summary="publish a prepared disk as a vDisk (VHDX or VHD) in a PVS store on SMB",
                Params=Params, plan=plan, apply=apply, disk_params=("disk",),
                error_groups=("disk", "smb", "step"), validate=validate,
                describe=diskexport.describe,
                cli=CliSpec("publish", "publish a prepared disk as a vDisk in a PVS store on SMB", arguments,
                            cli_params, flags={"disk": "DISK", "vDiskName": "--vdisk", "SmbDiskFormat": "--format",
                                               "overwriteTargetFile": "--overwrite", "hashDisk": "--hash",
                                               "resume": "--no-resume",
                                               **location_flags("outputStorageLocation", "STORE")}))
