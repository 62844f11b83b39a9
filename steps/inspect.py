"""inspect: what is on a disk — format, firmware, filesystems, Windows, Citrix components, hypervisor tools.

Read-only by construction: the drive is added read-only and the Windows volume mounted read-only. The facts and
how they are read are the mechanism package ``ce.windows``; this module is the step around it. Reading is all
inspect does, so its plan already holds the report (``facts``, whole: ``ce inspect --json`` prints it) and its
result is the plan's, with nothing changed; the report's warnings are the plan's warnings too.
"""
from __future__ import annotations

from pydantic import Field

from ce.changes import Plan, Result
from ce.step import StepContext, StepParams, StepType
from ce.windows import InspectReport, inspect_path

NAME = "inspect"


class Params(StepParams):
    disk: str = Field(description="disk image file (raw, qcow2, vhd, vhdx, vmdk) or block device")
    root: str | None = Field(None, description="Windows root device when the disk holds several, e.g. /dev/sda3")


def plan(params: Params, ctx: StepContext) -> Plan:
    report = inspect_path(params.disk, root=params.root, progress=ctx.progress)
    return Plan(step=NAME, facts=report.model_dump(mode="json"), warnings=report.warnings)


def apply(params: Params, plan: Plan, ctx: StepContext) -> Result:
    return Result.of(plan, facts=plan.facts)


def describe(document: Plan | Result) -> list[str]:
    """The report's rows for people (the warnings are listed with every step's)."""
    return InspectReport.model_validate(document.facts).describe() if document.facts else []


STEP = StepType(name=NAME, Facts=InspectReport, summary="describe a disk: format, firmware, Windows, Citrix VDA, hypervisor tools "
                "(read-only)", Params=Params, plan=plan, apply=apply, disk_params=("disk",),
                error_groups=("disk", "guest", "registry", "step"), describe=describe)
