"""The API's request and response models: the app validates with them and ``/openapi.json`` is generated from them
(plus each step type's own ``Params`` model), so the document cannot drift from what the server accepts."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..changes import Plan, Result
from ..document import SCHEMA_VERSION

STEP_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
Status = Literal["pending", "running", "succeeded", "failed", "canceled"]


class StepCreate(BaseModel):
    """A step to run: ``id`` is chosen by the connector and makes the request idempotent."""
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=STEP_ID, description="the connector's step id; a retried POST with the same id and "
                                                 "params returns the same step")
    type: str = Field(description="a step type from GET /v1/steps")
    params: dict[str, Any] = Field(default_factory=dict, description="the step type's parameters")


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable")
    message: str = Field(description="one actionable line")
    field: str | None = Field(None, description="the offending request field, for invalid input")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class StepWarning(BaseModel):
    code: str
    message: str


class Step(BaseModel):
    schemaVersion: Literal[2] = Field(SCHEMA_VERSION, description="the version of ce's documents (ce.document)")
    id: str
    type: str
    status: Status
    progressPercent: float = Field(ge=0, le=100)
    message: str = Field(description="what the step is doing now")
    bytesDone: int | None = Field(None, description="data work: bytes of the current phase done (absent otherwise)")
    bytesTotal: int | None = Field(None, description="data work: bytes the current phase moves in all")
    bytesPerSecond: int | None = Field(None, description="data work: the rate over the last few seconds")
    warnings: list[StepWarning]
    error: ErrorDetail | None = Field(None, description="why the step failed or was canceled")
    result: Plan | Result | None = Field(None, description="the plan (dryRun) or the result of a run, the same shapes "
                                                           "as the CLI's --json; a failed run's result says what was "
                                                           "and was not done")
    params: dict[str, Any] = Field(description="the params as validated; secrets read **********")
    timeoutSeconds: int
    createdAt: str
    startedAt: str | None = None
    finishedAt: str | None = None


class StepTypeInfo(BaseModel):
    name: str
    summary: str
    diskParams: list[str] = Field(description="params naming attached disks (each is locked while the step runs)")
    paramsSchema: dict[str, Any] = Field(description="JSON schema of params")
    factsSchema: dict[str, Any] | None = Field(None, description="JSON schema of its plans' and results' facts")


class StepTypes(BaseModel):
    types: list[StepTypeInfo]


class Disk(BaseModel):
    path: str
    format: str | None = None
    subformat: str | None = None
    virtualSize: int | None = None
    actualSize: int | None = None
    inUseBy: str | None = Field(None, description="the step holding the disk")
    error: ErrorDetail | None = Field(None, description="why the disk could not be read")


class Disks(BaseModel):
    disks: list[Disk]


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class LogLine(BaseModel):
    seq: int
    time: str
    level: str
    message: str


class StepLog(BaseModel):
    lines: list[LogLine]
    next: int = Field(description="pass as ?since= to get only newer lines")
