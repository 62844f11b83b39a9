"""publish: a prepared disk -> a vDisk (VHDX by default, or VHD) in a Citrix Provisioning (PVS) store on SMB.

Export semantics (steps/export.py: a raw disk streamed into the container, other formats converted in scratch space
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

from pydantic import BaseModel, ConfigDict, Field

from ce.errors import CeError
from ce.smb import RemoteExists
from ce.smbtarget import StorageLocation
from ce.step import StepContext, StepType, register

from . import export

NAME = "publish"
VDISK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 _\-()]{0,99}$")
LOCK_SUFFIX = ".lok"


class VDiskInUse(CeError):
    code = "vdisk_in_use"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    disk: str = Field(description="the prepared disk: disk file (raw, qcow2, vhd, vhdx, vmdk) or block device")
    outputStorageLocation: StorageLocation = Field(description="the PVS store folder on its SMB share")
    vDiskName: str = Field(min_length=1, max_length=100, description="vDisk name without extension")
    SmbDiskFormat: Literal["VhdxDiskFormat", "VhdDiskFormat"] = "VhdxDiskFormat"
    overwriteTargetFile: bool = False
    hashDisk: bool = False
    timeout: int = Field(7200, ge=10, le=7 * 86400)
    dryRun: bool = False


def validate(params: Params) -> None:
    if not VDISK_NAME.match(params.vDiskName):
        raise export.InvalidName(f"params.vDiskName {params.vDiskName!r} is not a usable vDisk name: letters, "
                                 "digits, spaces, '-', '_' and parentheses, at most 100, no dots or path "
                                 "separators (PVS adds the extension and version numbers itself)", field="vDiskName")


def export_params(params: Params) -> export.Params:
    return export.Params(disk=params.disk, outputStorageLocation=params.outputStorageLocation,
                         SmbDiskName=params.vDiskName, SmbDiskFormat=params.SmbDiskFormat,
                         overwriteTargetFile=params.overwriteTargetFile, hashDisk=params.hashDisk,
                         timeout=params.timeout, dryRun=params.dryRun)


def plan(params: Params) -> dict:
    validate(params)
    as_export = export_params(params)
    name = export.file_name(as_export)
    with params.outputStorageLocation.share() as share:
        _refuse_pvs_conflicts(share, params.vDiskName, name)
        pvp = share.exists(params.vDiskName + ".pvp")
    planned = export.plan(as_export, name, NAME)
    planned["target"]["vDiskName"] = params.vDiskName
    planned["target"]["pvp"] = ("kept as it is" if pvp else
                                "none: add the vDisk in the PVS console (Stores > Add or Import Existing vDisk)")
    return planned


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


def run(params: Params, ctx: StepContext) -> dict:
    planned = plan(params)
    if params.dryRun:
        return planned
    result = export.upload_disk(export_params(params), ctx, planned, NAME)
    result["target"]["vDiskName"] = params.vDiskName
    return result


STEP = register(StepType(name=NAME, summary="publish a prepared disk as a vDisk (VHDX or VHD) in a PVS store on SMB",
                         Params=Params, run=run, disk_params=("disk",), validate=validate))
