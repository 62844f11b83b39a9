"""Run a job's step against a local disk: ``ce plan`` (dry run) and ``ce run`` (apply).

A job file is ``{"type": "prepare", "params": {...}}`` with the service's parameter names. One libguestfs launch
per run: inspect (for the facts the step decides on), plan, and -- for ``run`` -- apply, within the job's timeout.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pydantic import ValidationError

import steps.prepare

from . import disks
from .errors import CeError
from .guest import Drive, Guest, WindowsRoot
from .plan import ApplyResult, Plan, Planner, apply

STEPS = {steps.prepare.NAME: steps.prepare}


class InvalidJob(CeError):
    code = "invalid_job"


def load_job(path: str):
    try:
        job = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidJob(f"cannot read job file {path}: {exc}") from None
    if not isinstance(job, dict) or job.get("type") not in STEPS:
        raise InvalidJob(f"{path}: \"type\" must be one of {', '.join(STEPS)}")
    module = STEPS[job["type"]]
    try:
        return module, module.Params.model_validate(job.get("params", {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "params"
        raise InvalidJob(f"{path}: params.{field}: {first['msg']} ({len(exc.errors())} problem(s))") from None


def run_job(job_path: str, disk: str, *, apply_changes: bool, root: str | None = None) -> Plan | ApplyResult:
    from steps.inspect import inspect_guest
    module, params = load_job(job_path)
    module.validate(params)
    apply_changes = apply_changes and not getattr(params, "dryRun", False)
    info = disks.info(disk)
    with Guest([Drive(disk, info.format, readonly=not apply_changes)]) as guest:
        with guest.deadline(params.timeout, f"the {module.NAME} step"):
            facts = inspect_guest(guest, info, root)
            win = WindowsRoot(device=facts.os.root_device, systemroot=facts.os.systemroot, arch=facts.os.arch)
            guest.mount_windows(win, readonly=not apply_changes)
            with tempfile.TemporaryDirectory(prefix="ce-job-") as tmp:
                planner = Planner(module.NAME, guest, win, Path(tmp))
                try:
                    module.plan(planner, facts, params)
                finally:
                    planner.close()
                if not apply_changes:
                    return planner.plan
                return apply(guest, win, planner.plan)
