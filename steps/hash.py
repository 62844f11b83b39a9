"""hash: md5 / sha256 of a disk's contents (what a VM reads), or of the file itself with ``of: "file"``.

The contents hash is the same for a disk whatever its container (raw, VHDX, VHD, VMDK, qcow2): it is what export's
``hashDisk`` returns and what prepare's ``md5Hash`` pre-check compares with (ce/hashing.py explains the choice).

The disk may also be a file on an SMB share (``inputStorageLocation`` + ``inputImageFilename``): an export's upload
checked where it landed. Its contents are read in place, as convert reads a share's image (an NBD export of the
file under a local overlay: nothing is copied); ``of: "file"`` streams its bytes.
"""
from __future__ import annotations

import contextlib
from typing import Literal

from pydantic import Field

from ce import disks, hashing, staging
from ce.changes import DiskHash, Plan, Result
from ce.cli.smbargs import is_smb, location_flags, split_file, storage
from ce.document import Facts as FactsBase
from ce.errors import HashMismatch, ImageChangedSincePlan, InvalidParams
from ce.sizes import human_size
from ce.smb.target import StorageLocation
from ce.step import CliSpec, StepContext, StepParams, StepType

NAME = "hash"


class Params(StepParams):
    disk: str | None = Field(None, description="disk file (raw, qcow2, vhd, vhdx, vmdk) or block device")
    inputStorageLocation: StorageLocation | None = Field(None, description="the SMB folder of a file to hash "
                                                                           "instead of a disk")
    inputImageFilename: str | None = Field(None, min_length=1, description="the file in inputStorageLocation")
    algorithms: list[Literal["md5", "sha256"]] = Field(default_factory=lambda: list(hashing.ALGORITHMS), min_length=1)
    of: Literal["content", "file"] = Field("content", description="content: the disk's virtual bytes; file: the "
                                                                  "file's own bytes, container included")
    format: str | None = Field(None, description="the disk's format when probing must not decide (raw, vhd, ...)")
    expected: dict[str, str] = Field(default_factory=dict, description="algorithm -> hex; a mismatch fails the step")


def validate(params: Params) -> None:
    on_share = (params.inputStorageLocation is not None, params.inputImageFilename is not None)
    if on_share[0] != on_share[1]:
        raise InvalidParams("params.inputStorageLocation and params.inputImageFilename go together",
                            field="inputImageFilename" if on_share[0] else "inputStorageLocation")
    if bool(params.disk) == on_share[0]:
        raise InvalidParams("give params.disk, or params.inputStorageLocation with params.inputImageFilename "
                            "(a file on a share), not both", field="disk")
    if params.format:
        disks.qemu_format(params.format)
    unknown = set(params.expected) - set(params.algorithms)
    if unknown:
        raise InvalidParams(f"params.expected names {', '.join(sorted(unknown))}, which is not in "
                            "params.algorithms", field="expected")


def where(params: Params) -> str:
    if params.disk:
        return params.disk
    return f"{params.inputStorageLocation.location}\\{params.inputImageFilename}"


class Facts(FactsBase):
    disk: str                              # the local path, or \\host\share\folder\file
    of: Literal["content", "file"]
    size: int                              # bytes hashed: the virtual size (content) or the file's size
    format: str
    fileSize: int
    algorithms: list[str]
    hashes: dict[str, str] | None = None   # a result's digests, lower-case hex
    verified: list[str] | None = None      # the algorithms checked against params.expected


def plan(params: Params, ctx: StepContext) -> Plan:
    validate(params)
    if params.disk:
        info = disks.info(params.disk, params.format)
        file_size = disks.byte_size(params.disk)
    else:
        from ce import nbdexport                  # only a file on a share needs it (and multiprocessing)
        with staging.scratch_dir(NAME) as scratch, \
                nbdexport.serving(params.inputStorageLocation, params.inputImageFilename, scratch) as export:
            info = disks.remote_info(export.uri, params.format, where(params), export.reader.read_at, export.size)
            file_size = export.size
    size = info.virtual_size if params.of == "content" else file_size
    change = DiskHash(disk=where(params), of=params.of, algorithms=params.algorithms, expected=params.expected)
    return Plan(step=NAME, changes=[change], facts={"disk": where(params), "of": params.of, "size": size,
                                                    "format": disks.FORMAT_LABELS[info.format].lower(),
                                                    "fileSize": file_size, "algorithms": params.algorithms})


def apply(params: Params, planned: Plan, ctx: StepContext) -> Result:
    report = ctx.band(0, 100, f"hashing the {params.of}", unit="bytes")
    if params.disk and params.of == "content" and planned.facts["format"] != "raw":
        digest = hashing.hash_disk(params.disk, planned.facts["format"], params.algorithms, progress=report,
                                   cancel=ctx.stop)
    elif params.disk:                      # a raw disk's contents are its bytes: the plan's probe holds
        if disks.byte_size(params.disk) != planned.facts["fileSize"]:
            raise ImageChangedSincePlan(f"{params.disk} changed size since the plan: run the step again")
        digest = hashing.hash_file(params.disk, params.algorithms, progress=report, cancel=ctx.stop)
    else:
        digest = _hash_on_share(params, planned.facts, report, ctx)
    mismatched = {a: v for a, v in params.expected.items() if v.lower() != digest.hashes[a]}
    if mismatched:
        raise HashMismatch(f"{where(params)} does not have the expected {', '.join(mismatched)}: got "
                           + ", ".join(f"{a} {digest.hashes[a]} (expected {v})" for a, v in mismatched.items()))
    return Result.of(planned, facts={**planned.facts, "hashes": digest.hashes, "verified": sorted(params.expected)})


def _hash_on_share(params: Params, facts: dict, report, ctx: StepContext) -> hashing.DiskHash:
    from ce import nbdexport
    with contextlib.ExitStack() as held:
        scratch = held.enter_context(staging.scratch_dir(NAME))
        export = held.enter_context(nbdexport.serving(params.inputStorageLocation, params.inputImageFilename,
                                                      scratch))
        if export.size != facts["fileSize"]:
            raise ImageChangedSincePlan(f"{where(params)} changed on the share since the plan: run the step again")
        if params.of == "file":
            return hashing.hash_remote_file(export.reader.read_at, export.size, where(params), params.algorithms,
                                            progress=report, cancel=ctx.stop)
        overlay = scratch / "source.qcow2"          # qemu-img decodes the image in place through it
        disks.create_overlay(export.uri, facts["format"], overlay, facts["size"])
        digest = hashing.hash_disk(overlay, "qcow2", params.algorithms, progress=report, cancel=ctx.stop)
        return hashing.DiskHash(path=where(params), format=facts["format"], size=digest.size, hashes=digest.hashes)


def describe(document: Plan | Result) -> list[str]:
    facts = document.facts
    lines = [f"{facts['disk']} ({facts['format']}, {facts['of']}, {human_size(facts['size'])})"]
    return lines + [f"{algorithm:<7} {value}" for algorithm, value in (facts.get("hashes") or {}).items()]


# ---------------------------------------------------------------- command line

def arguments(p) -> None:
    p.add_argument("disk", help=r"disk file or block device, or a file on SMB: \\host\share\folder\disk.vhdx")
    p.add_argument("-a", "--algorithm", action="append", choices=("md5", "sha256"), type=str.lower,
                   help="repeat for several (default: md5 and sha256)")
    p.add_argument("--file", action="store_true", help="hash the file's own bytes, not the disk's contents")
    p.add_argument("--source-format", help="the disk's format when probing must not decide")
    p.add_argument("--expect", action="append", default=[], metavar="ALG:HEX", help="fail unless the hash matches")


def cli_params(args) -> dict:
    expected = {}
    for item in args.expect:
        algorithm, _, value = item.partition(":")
        if not value:
            raise InvalidParams(f"--expect {item!r}: write ALGORITHM:HEX, e.g. md5:0123...")
        expected[algorithm.lower()] = value
    algorithms = args.algorithm or sorted({"md5", "sha256"} | set(expected))
    params = {"algorithms": algorithms, "of": "file" if args.file else "content", "format": args.source_format,
              "expected": expected}
    if is_smb(args.disk):
        folder, name = split_file(args.disk)
        return {**params, "inputStorageLocation": storage(args, folder), "inputImageFilename": name}
    return {**params, "disk": args.disk}


STEP = StepType(name=NAME, Facts=Facts, summary="md5 / sha256 of a disk's contents (or of the file)", Params=Params, plan=plan,
                apply=apply, disk_params=("disk",), error_groups=("disk", "smb", "step"), validate=validate,
                describe=describe,
                cli=CliSpec("hash", "md5 / sha256 of a disk's contents (or of the file with --file)", arguments,
                            cli_params, flags={"disk": "DISK", "algorithms": "--algorithm", "of": "--file",
                                               "format": "--source-format", "expected": "--expect",
                                               "inputImageFilename": "DISK",
                                               **location_flags("inputStorageLocation", "DISK")}))
