"""Job files and the guest-step session: ``ce plan`` (dry run) and ``ce run`` (apply).

A job file is ``{"type": "prepare", "params": {...}}`` with the service's parameter names; the disk comes from
the command line. A guest step does one libguestfs launch: inspect (for the facts the step decides on), plan, and
-- unless it is a dry run -- apply, all within the step's timeout.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable

from . import disks, faults, step
from .errors import CeError
from .guest import Drive, Guest, WindowsRoot
from .plan import ApplyResult, Plan, Planner, apply


class InvalidJob(CeError):
    code = "invalid_job"


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
    ctx.progress(2, "starting the appliance")
    with Guest([Drive(disk, info.format, readonly=dry_run)]) as guest:
        with guest.deadline(timeout, f"the {name} step"):
            ctx.progress(20, "inspecting the image")
            facts = inspect_guest(guest, info, root)
            win = WindowsRoot(device=facts.os.root_device, systemroot=facts.os.systemroot, arch=facts.os.arch)
            guest.mount_windows(win, readonly=dry_run)
            with tempfile.TemporaryDirectory(prefix="ce-job-") as tmp:
                ctx.progress(40, "planning")
                planner = Planner(name, guest, win, Path(tmp))
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
