"""The one Plan and one Result every step returns, and the change kinds a plan lists.

A plan is what a step will do, from reads only: typed changes (registry values, files, first-boot actions, disks
read, written or hashed, a bundle of logs written), the facts it read that people need (``facts``: sizes, space,
formats) and warnings. A dry run returns the plan; a run returns the result: each planned change with its outcome,
the facts measured while doing it, warnings, the error that stopped it (if one did) and the time taken. A step made
of parts (a sequence) returns one plan / result holding each part's. Every kind describes itself for people
(``describe()``); the CLI prints plans and results from that alone.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field
from ..document import SCHEMA_VERSION, Document

from ..firstboot import FirstBootAction
from .disk import BundleWrite, DiskHash, DiskRead, DiskWrite
from .guest import REGISTRY_CHANGES, FileWrite, FilesystemCreate, GptConversion, PartitionTableWrite, RegistryDeleteKey, \
    RegistryDeleteValue, RegistrySet

Change = Annotated[Union[RegistrySet, RegistryDeleteValue, RegistryDeleteKey, FileWrite, FirstBootAction,
                         PartitionTableWrite, GptConversion, FilesystemCreate, DiskRead, DiskWrite, DiskHash, BundleWrite],
                   Field(discriminator="kind")]


class StepWarning(Document):
    code: str
    message: str


class Plan(Document):
    schema_version: Literal[2] = SCHEMA_VERSION
    step: str
    dryRun: Literal[True] = True
    changes: list[Change] = []
    facts: dict[str, Any] = {}
    warnings: list[StepWarning] = []
    parts: list["Plan"] = []


class ChangeOutcome(Document):
    change: Change
    status: Literal["applied", "failed", "not_attempted"]


class Result(Document):
    schema_version: Literal[2] = SCHEMA_VERSION
    step: str
    dryRun: Literal[False] = False
    outcomes: list[ChangeOutcome] = []
    facts: dict[str, Any] = {}
    warnings: list[StepWarning] = []
    error: dict | None = None             # {"code", "message"} when the step stopped; later changes not attempted
    seconds: float = 0.0
    parts: list["Result"] = []

    @classmethod
    def of(cls, plan: Plan, **fields) -> "Result":
        """Every planned change applied (the disk steps: their one write either happened or the step raised)."""
        return cls(step=plan.step, outcomes=[ChangeOutcome(change=c, status="applied") for c in plan.changes],
                   warnings=list(plan.warnings), **fields)


def describe(document: Plan | Result) -> list[str]:
    """Lines for people: each change (would / status), the parts of a sequence, errors and warnings."""
    if isinstance(document, Plan):
        lines = [f"would {c.describe()}" + (f"  -- {c.reason}" if c.reason else "") for c in document.changes]
        if not document.changes and not document.parts:
            lines.append("nothing to change")
    else:
        lines = [f"{o.status:13} {o.change.describe()}" for o in document.outcomes]
        if document.error:
            lines.append(f"error [{document.error['code']}]: {document.error['message']}")
    for part in document.parts:
        lines += [f"{part.step}: {line}" for line in describe(part)]
    lines += [f"warning [{w.code}]: {w.message}" for w in document.warnings]
    return lines


__all__ = ["BundleWrite", "Change", "ChangeOutcome", "DiskHash", "DiskRead", "DiskWrite", "FileWrite",
           "FilesystemCreate", "FirstBootAction", "GptConversion", "PartitionTableWrite", "Plan", "REGISTRY_CHANGES",
           "RegistryDeleteKey", "RegistryDeleteValue", "RegistrySet", "Result", "StepWarning", "describe"]
