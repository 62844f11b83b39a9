"""hash: md5 / sha256 of a disk's contents (what a VM reads), or of the file itself with ``of: "file"``.

The contents hash is the same for a disk whatever its container (raw, VHDX, VHD, VMDK, qcow2): it is what export's
``hashDisk`` returns and what prepare's ``md5Hash`` pre-check compares with (ce/hashing.py explains the choice).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ce import disks, hashing
from ce.changes import DiskHash, Plan, Result
from ce.errors import HashMismatch, InvalidParams
from ce.sizes import human_size
from ce.step import CliSpec, StepContext, StepParams, StepType

NAME = "hash"


class Params(StepParams):
    disk: str = Field(description="disk file (raw, qcow2, vhd, vhdx, vmdk) or block device")
    algorithms: list[Literal["md5", "sha256"]] = Field(default_factory=lambda: list(hashing.ALGORITHMS), min_length=1)
    of: Literal["content", "file"] = Field("content", description="content: the disk's virtual bytes; file: the "
                                                                  "file's own bytes, container included")
    format: str | None = Field(None, description="the disk's format when probing must not decide (raw, vhd, ...)")
    expected: dict[str, str] = Field(default_factory=dict, description="algorithm -> hex; a mismatch fails the step")


def validate(params: Params) -> None:
    if params.format:
        disks.qemu_format(params.format)
    unknown = set(params.expected) - set(params.algorithms)
    if unknown:
        raise InvalidParams(f"params.expected names {', '.join(sorted(unknown))}, which is not in "
                            "params.algorithms", field="expected")


def plan(params: Params, ctx: StepContext) -> Plan:
    validate(params)
    info = disks.info(params.disk, params.format)
    size = info.virtual_size if params.of == "content" else disks.byte_size(params.disk)
    change = DiskHash(disk=params.disk, of=params.of, algorithms=params.algorithms, expected=params.expected)
    return Plan(step=NAME, changes=[change], facts={"disk": params.disk, "of": params.of, "size": size,
                                                    "format": disks.FORMAT_LABELS[info.format].lower(),
                                                    "algorithms": params.algorithms})


def apply(params: Params, planned: Plan, ctx: StepContext) -> Result:
    report = ctx.band(0, 100, f"hashing the {params.of}")
    if params.of == "content":
        digest = hashing.hash_disk(params.disk, params.format, params.algorithms, progress=report, cancel=ctx.stop)
    else:
        digest = hashing.hash_file(params.disk, params.algorithms, progress=report, cancel=ctx.stop)
    mismatched = {a: v for a, v in params.expected.items() if v.lower() != digest.hashes[a]}
    if mismatched:
        raise HashMismatch(f"{params.disk} does not have the expected {', '.join(mismatched)}: got "
                           + ", ".join(f"{a} {digest.hashes[a]} (expected {v})" for a, v in mismatched.items()))
    return Result.of(planned, facts={**planned.facts, "hashes": digest.hashes, "verified": sorted(params.expected)})


def describe(document: Plan | Result) -> list[str]:
    facts = document.facts
    lines = [f"{facts['disk']} ({facts['format']}, {facts['of']}, {human_size(facts['size'])})"]
    return lines + [f"{algorithm:<7} {value}" for algorithm, value in (facts.get("hashes") or {}).items()]


# ---------------------------------------------------------------- command line

def arguments(p) -> None:
    p.add_argument("disk", help="disk file or block device")
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
    return {"disk": args.disk, "algorithms": algorithms, "of": "file" if args.file else "content",
            "format": args.source_format, "expected": expected}


STEP = StepType(name=NAME, summary="md5 / sha256 of a disk's contents (or of the file)", Params=Params, plan=plan,
                apply=apply, disk_params=("disk",), error_groups=("disk", "step"), validate=validate, describe=describe,
                cli=CliSpec("hash", "md5 / sha256 of a disk's contents (or of the file with --file)", arguments,
                            cli_params, smb=False, flags={"disk": "DISK", "algorithms": "--algorithm", "of": "--file",
                                                          "format": "--source-format", "expected": "--expect"}))
