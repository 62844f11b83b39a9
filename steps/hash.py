"""hash: md5 / sha256 of a disk's contents (what a VM reads), or of the file itself with ``of: "file"``.

The contents hash is the same for a disk whatever its container (raw, VHDX, VHD, VMDK, qcow2): it is what export's
``hashDisk`` returns and what prepare's ``md5Hash`` pre-check compares with (ce/hashing.py explains the choice).
"""
from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ce import disks, hashing, staging
from ce.errors import CeError
from ce.step import StepContext, StepType, register

NAME = "hash"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disk: str = Field(description="disk file (raw, qcow2, vhd, vhdx, vmdk) or block device")
    algorithms: list[Literal["md5", "sha256"]] = Field(default_factory=lambda: list(hashing.ALGORITHMS), min_length=1)
    of: Literal["content", "file"] = Field("content", description="content: the disk's virtual bytes; file: the "
                                                                  "file's own bytes, container included")
    format: str | None = Field(None, description="the disk's format when probing must not decide (raw, vhd, ...)")
    expected: dict[str, str] = Field(default_factory=dict, description="algorithm -> hex; a mismatch fails the step")
    timeout: int = Field(7200, ge=10, le=7 * 86400)
    dryRun: bool = False


class HashMismatch(disks.DiskError):
    code = "hash_mismatch"


def validate(params: Params) -> None:
    if params.format:
        disks.qemu_format(params.format)
    unknown = set(params.expected) - set(params.algorithms)
    if unknown:
        raise CeError(f"params.expected names {', '.join(sorted(unknown))}, which is not in "
                              "params.algorithms", code="invalid_params")


def plan(params: Params) -> dict:
    validate(params)
    info = disks.info(params.disk, params.format)
    size = info.virtual_size if params.of == "content" else disks._size(params.disk)
    return {"step": NAME, "dryRun": True, "disk": params.disk, "format": disks.FORMAT_LABELS[info.format].lower(),
            "of": params.of, "size": size, "algorithms": params.algorithms}


def run(params: Params, ctx: StepContext) -> dict:
    planned = plan(params)
    if params.dryRun:
        return planned
    started = time.monotonic()
    stop = staging.Stopper(ctx, params.timeout, NAME)
    report = staging.progress_band(ctx, 0, 100, f"hashing the {params.of}")
    with stop.translating():
        if params.of == "content":
            digest = hashing.hash_disk(params.disk, params.format, params.algorithms, progress=report, cancel=stop)
        else:
            digest = hashing.hash_file(params.disk, params.algorithms, progress=report, cancel=stop)
    seconds = time.monotonic() - started
    mismatched = {a: v for a, v in params.expected.items() if v.lower() != digest.hashes[a]}
    if mismatched:
        raise HashMismatch(f"{params.disk} does not have the expected {', '.join(mismatched)}: got "
                           + ", ".join(f"{a} {digest.hashes[a]} (expected {v})" for a, v in mismatched.items()))
    return {**planned, "dryRun": False, "hashes": digest.hashes, "seconds": round(seconds, 3),
            "verified": sorted(params.expected)}


STEP = register(StepType(name=NAME, summary="md5 / sha256 of a disk's contents (or of the file)", Params=Params,
                         run=run, disk_params=("disk",), validate=validate))
