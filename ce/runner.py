"""Job files and the guest-step session: ``ce plan`` (dry run) and ``ce run`` (apply).

A job file is ``{"type": "prepare", "params": {...}}`` with the service's parameter names; the disk comes from
the command line. A guest step does one libguestfs launch: inspect (for the facts the step decides on), plan, and
-- unless it is a dry run -- apply, all within the step's timeout.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import struct
import tempfile
from importlib import resources
from pathlib import Path
from typing import Callable

from . import disks, faults, step
from .errors import CeError, HiveDirty
from .guest import Drive, Guest, WindowsRoot
from .plan import ApplyResult, Plan, Planner, apply


class InvalidJob(CeError):
    code = "invalid_job"


BLKROGET = 0x125E                                # linux/fs.h: is the block device read-only?


class DiskReadOnly(CeError):
    code = "disk_read_only"


class WindowsUnsupported(CeError):
    code = "windows_unsupported"


def require_writable(disk: str) -> None:
    """Checked before a launch: qemu would otherwise fail late with a lock or permission message."""
    try:
        fd = os.open(disk, os.O_RDWR)           # not os.access: root passes that even on a read-only file
        try:
            if stat.S_ISBLK(os.fstat(fd).st_mode) and struct.unpack("i", fcntl.ioctl(fd, BLKROGET, b"\0" * 4))[0]:
                raise OSError(errno.EROFS, "read-only block device")
        finally:
            os.close(fd)
    except OSError as exc:
        raise DiskReadOnly(f"{disk}: {exc.strerror}: the disk cannot be opened for writing (read-only file, "
                           f"device or mount); nothing was changed, a dry run (ce plan) can still read it") from None


def require_supported_windows(facts) -> None:
    rules = json.loads(resources.files("ce").joinpath("data/windows_support.json").read_text())
    if facts.os.product not in rules["products"] or facts.os.arch not in rules["architectures"]:
        raise WindowsUnsupported(f"{facts.os.product_name} (build {facts.os.build}, {facts.os.arch}) is not a "
                                 f"Windows release prepare supports ({', '.join(rules['products'])}, "
                                 f"{'/'.join(rules['architectures'])}): nothing was changed")


def load_job(path: str, **overrides) -> tuple[step.StepType, object]:
    """Read a job file; ``overrides`` (disk, root, dryRun from the command line) replace its params."""
    try:
        job = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidJob(f"cannot read job file {path}: {exc}") from None
    types = step.load_all()
    if not isinstance(job, dict) or job.get("type") not in types:
        raise InvalidJob(f"{path}: \"type\" must be one of {', '.join(types)}")
    raw = job.get("params", {})
    if not isinstance(raw, dict):
        raise InvalidJob(f"{path}: \"params\" must be an object")
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    kind = types[job["type"]]
    try:
        return kind, kind.parse(raw)
    except step.InvalidParams as exc:
        raise InvalidJob(f"{path}: {exc.message}") from None


def guest_session(disk: str, *, root: str | None, timeout: int, dry_run: bool, name: str,
                  plan_fn: Callable, ctx: step.StepContext) -> Plan | ApplyResult:
    """One launch: inspect, mount the Windows root, ``plan_fn(planner, facts)``, then apply unless dry run."""
    from steps.inspect import inspect_guest
    info = disks.info(disk)
    if not dry_run:
        require_writable(disk)
    ctx.progress(2, "starting the appliance")
    with Guest([Drive(disk, info.format, readonly=dry_run)]) as guest:
        with guest.deadline(timeout, f"the {name} step"):
            ctx.progress(20, "inspecting the image")
            facts = inspect_guest(guest, info, root)
            require_supported_windows(facts)
            if facts.state.dirty_hives and not dry_run:
                raise HiveDirty(f"hive(s) {', '.join(facts.state.dirty_hives)} have transactions pending in their "
                                f".LOG files (Windows was not shut down cleanly): boot and shut down Windows once, "
                                f"then prepare again; nothing was changed")
            win = WindowsRoot(device=facts.os.root_device, systemroot=facts.os.systemroot, arch=facts.os.arch)
            guest.mount_windows(win, readonly=dry_run)
            with tempfile.TemporaryDirectory(prefix="ce-job-") as tmp:
                ctx.progress(40, "planning")
                planner = Planner(name, guest, win, Path(tmp))
                planner.plan.warnings.extend(facts.warnings)      # a dry run shows what a run would refuse
                try:
                    plan_fn(planner, facts)
                    planner.finish()
                finally:
                    planner.close()
                if dry_run:
                    return planner.plan
                ctx.progress(60, f"applying {len(planner.plan.changes)} change(s)")
                faults.note("# apply")
                return apply(guest, win, planner.plan)
