"""Step types, the one driver that runs them, and the context a running step reports through.

A step type (a module in ``steps/``, listed in ``steps.STEPS``) declares its ``Params`` (a ``StepParams`` model),
``plan(params, ctx) -> Plan`` (reads only) and ``apply(params, plan, ctx) -> Result`` (performs exactly the plan).
``execute()`` is the only caller of either: it gives the step its deadline and cancel (``ctx.stop``), keeps what a
plan opens for its apply (``ctx.held``: a guest step's one libguestfs launch), returns the plan for a dry run,
times the run, reports 100 %, and turns a result with an error into ``StepFailed`` (which still carries the exact
result). The CLI, job files and the server all go through it, so every step returns one Plan / Result shape
(``ce.changes``) everywhere.

A ``sequence`` is a step made of steps: the parts run in order, each planned right before it is applied (a later
part's plan reads what an earlier part wrote), under one deadline, one cancel and one progress scale; the result
holds each part's result, and a part that fails leaves the earlier parts' results in the error's result.

The step types come from the ``ce.steps`` entry point (``steps:STEPS``, an explicit tuple) and, for the server, from
modules named in its configuration (each with its own ``STEPS``): nothing registers itself on import. The command
line first reads the entry point module's ``COMMANDS`` index, so that a command loads only the step it runs
(``ce.cli.lazy``).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterator

import types
import typing

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .changes import Plan, Result
from .document import facts_problem, strict
from .errors import Canceled, CeError, InvalidParams, StepFailed, TimedOut, first_problem

ENTRY_POINT_GROUP = "ce.steps"
MAX_TIMEOUT = 7 * 86400

class StepParams(BaseModel):
    """What every step's params share: one set of bounds, unknown fields refused, inputs kept out of errors (a
    password in a rejected value must not come back in the message)."""
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, defer_build=True)  # built on first use
    timeout: int = Field(7200, ge=10, le=MAX_TIMEOUT, description="seconds for the whole step")
    dryRun: bool = Field(False, description="plan only: return what the step would do, change nothing")


def canonical_choices(model: type[BaseModel], data):
    """``data`` with each choice written in another case ("mcs", "Azure", "vhdxdiskformat") replaced by the
    canonical one (``Mcs``, ``azure``, ``VhdxDiskFormat``): the params document then reports it so."""
    if not isinstance(data, dict):
        return data
    fixed = dict(data)
    for name, info in model.model_fields.items():
        choices, value = literal_strings(info.annotation), fixed.get(name)
        if choices and isinstance(value, str):
            fixed[name] = choices.get(value.lower(), value)
        elif choices and isinstance(value, list):
            fixed[name] = [choices.get(v.lower(), v) if isinstance(v, str) else v for v in value]
    return fixed


def literal_strings(annotation) -> dict[str, str]:
    """{lowercase: canonical} of the string choices of a ``Literal[...]`` annotation (also inside ``X | None`` and
    ``list[...]``); empty for anything else."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {v.lower(): v for v in typing.get_args(annotation) if isinstance(v, str)}
    if origin in (typing.Union, types.UnionType, list):
        found: dict[str, str] = {}
        for arg in typing.get_args(annotation):
            found.update(literal_strings(arg))
        return found
    return {}


# ---------------------------------------------------------------- context

class Stopper:
    """``ctx.stop``: the ``cancel`` callable handed to long operations, true once the step is canceled or its
    time is up."""

    def __init__(self, ctx: "StepContext", timeout: float | None, name: str):
        self.ctx, self.name, self.timeout = ctx, name, timeout
        self.deadline = time.monotonic() + timeout if timeout else None

    def __call__(self) -> bool:
        return self.ctx.canceled() or self.expired

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    @contextlib.contextmanager
    def translating(self) -> Iterator[None]:
        """A mechanism's Canceled becomes the step's: TimedOut when the deadline passed, the message kept."""
        try:
            yield
        except TimedOut:
            raise
        except Canceled as exc:
            if self.expired and not self.ctx.canceled():
                raise TimedOut(f"the {self.name} step ran out of its {self.timeout:g} s timeout: "
                               f"{exc.message}") from None
            raise


@dataclass
class StepContext:
    """What a running step may touch besides its params. Subclassed by the CLI (progress on stderr) and the server
    (events to the service)."""
    step_id: str = "local"
    workdir: Path | None = None
    warnings: list[dict] = field(default_factory=list)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ce.step"))
    stop: Stopper | None = None
    held: contextlib.ExitStack | None = None   # what a plan opens for its apply, closed after the apply
    session: Any = None                         # what a plan hands its apply (a guest step's WindowsSession)

    def progress(self, percent: float, message: str = "", transferred: tuple[int, int] | None = None) -> None:
        """percent in 0..100; message is a short present-tense phrase ("converting to vhdx"); transferred: (bytes
        done, bytes total) of a data path's phase, when it moves bytes."""

    def warn(self, code: str, message: str) -> None:
        self.warnings.append({"code": code, "message": message})
        self.log.warning("%s: %s", code, message)

    def canceled(self) -> bool:
        return self.cancel_event.is_set()

    def band(self, start: float, end: float, message: str, unit: str = "percent",
             size: int | None = None) -> Callable[..., None]:
        """A (done, total) callback that maps onto ``start..end`` percent of the step. ``unit="bytes"``: done and
        total count bytes, and each report carries them; ``size``: the callback's fraction is of ``size`` bytes
        (qemu-img's percent of a disk that large), reported as bytes too."""
        def report(done: float, total: float = 100.0) -> None:
            fraction = min(max(done / total if total else 1.0, 0.0), 1.0)
            moved = (int(done), int(total)) if unit == "bytes" else None
            if size is not None:
                moved = (int(size * fraction), size)
            percent = start + (end - start) * fraction
            self.progress(percent, message, moved) if moved else self.progress(percent, message)
        return report


class PartContext(StepContext):
    """A sequence part's view of the step's context: its progress is scaled into the part's band; cancel,
    deadline, warnings and log are the step's own."""

    def __init__(self, parent: StepContext, start: float, end: float):
        super().__init__(step_id=parent.step_id, workdir=parent.workdir, warnings=parent.warnings,
                         cancel_event=parent.cancel_event, log=parent.log, stop=parent.stop)
        self.parent, self.start, self.end = parent, start, end

    def progress(self, percent: float, message: str = "", transferred: tuple[int, int] | None = None) -> None:
        scaled = self.start + (self.end - self.start) * min(max(percent, 0.0), 100.0) / 100
        self.parent.progress(scaled, message, transferred) if transferred else self.parent.progress(scaled, message)

    def warn(self, code: str, message: str) -> None:
        self.parent.warn(code, message)


# ---------------------------------------------------------------- step types

@dataclass(frozen=True)
class CliSpec:
    """How a step appears on the command line: ``ce COMMAND ...``; ``params(args)`` maps the arguments onto the
    step's params (the CLI adds --json, --dry-run and --timeout itself)."""
    command: str
    help: str
    arguments: Callable[[Any], None]
    params: Callable[[Any], dict]
    smb: bool = True                      # the command takes SMB account options
    flags: dict[str, str] = field(default_factory=dict)   # param (dotted path) -> the argument that sets it


@dataclass(frozen=True)
class StepType:
    name: str
    summary: str
    Params: type[StepParams]
    plan: Callable[[Any, StepContext], Plan]
    apply: Callable[[Any, Plan | None, StepContext], Result]
    disk_params: tuple[str, ...] = ()        # params naming attached disks; the server locks each one
    validate: Callable[[Any], None] | None = None   # refusals that need no disk, before any work
    describe: Callable[[Plan | Result], list[str]] | None = None   # lines for people beyond the changes
    cli: CliSpec | None = None
    plan_ahead: bool = True                  # False: apply() plans as it goes (a sequence); plan() is the dry run
    error_groups: tuple[str, ...] = ("step",)      # the ce.errors groups of the codes it can return (see the OpenAPI)
    Facts: type[BaseModel] | None = None     # the schema of its documents' facts (ce.document; in /openapi.json)

    def parse(self, params: dict) -> Any:
        """Validate raw params; the first problem becomes one line naming the field."""
        try:
            parsed = self.Params.model_validate(canonical_choices(self.Params, params))
        except ValidationError as exc:
            raise InvalidParams(*first_problem(exc, prefix="params")) from None
        if self.validate:
            self.validate(parsed)
        return parsed

    def facts_schema(self) -> dict | None:
        return self.Facts.model_json_schema(mode="serialization") if self.Facts else None

    def disks(self, params: BaseModel) -> list[str]:
        return [v for v in (getattr(params, name, None) for name in self.disk_params) if v]


def execute(kind: StepType, params: Any, ctx: StepContext) -> Plan | Result:
    """The one driver: dry run or plan → apply, under the step's deadline and cancel, timed."""
    started = time.monotonic()
    ctx.stop = Stopper(ctx, params.timeout, kind.name)
    with ctx.stop.translating(), contextlib.ExitStack() as held:
        ctx.held = held
        if params.dryRun:
            return checked_facts(kind, kind.plan(params, ctx), ctx)
        plan = kind.plan(params, ctx) if kind.plan_ahead else None
        result = checked_facts(kind, kind.apply(params, plan, ctx), ctx)
    result.seconds = round(time.monotonic() - started, 3)
    ctx.progress(100, "done")
    if result.error:
        raise StepFailed(result.error["code"], result.error["message"], result.model_dump(mode="json"))
    return result


def checked_facts(kind: StepType, document: Plan | Result, ctx: StepContext) -> Plan | Result:
    """A document whose facts stray from the step's ``Facts`` schema is a defect of ce: with the tests' strict mode
    it fails; in service it is logged and the document kept (the work it reports is done)."""
    problem = kind.Facts and facts_problem(kind.Facts, document.facts)
    if problem and strict():
        raise AssertionError(f"the {kind.name} step's facts do not match its schema: {problem}")
    if problem:
        ctx.log.error("the %s step's facts do not match its schema: %s", kind.name, problem)
    return document


# ---------------------------------------------------------------- sequences

@dataclass(frozen=True)
class Part:
    """One step of a sequence: ``params(sequence_params, earlier)`` gives its raw params from the sequence's and
    the earlier parts' documents by step name (their results; their plans in a dry run -- both carry ``facts``);
    dryRun and timeout are set by the sequence. ``weight`` is its share of the progress scale."""
    kind: StepType
    params: Callable[[Any, dict[str, Plan | Result]], dict]
    weight: float = 1.0


def sequence(name: str, summary: str, Params: type[StepParams], parts: tuple[Part, ...], **fields) -> StepType:
    """A step that runs ``parts`` in order with one result holding each part's."""
    total = sum(p.weight for p in parts)
    bands, start = [], 0.0
    for part in parts:
        bands.append((start, start + 100 * part.weight / total))
        start = bands[-1][1]

    def run_parts(params, ctx: StepContext, dry: bool) -> tuple[list, dict | None]:
        done: dict[str, Plan | Result] = {}
        documents, error = [], None
        for part, (low, high) in zip(parts, bands):
            sub, started = PartContext(ctx, low, high), time.monotonic()
            try:
                raw = {**part.params(params, done), "dryRun": dry,
                       "timeout": max(int(ctx.stop.remaining() or params.timeout), 10)}
                part_params = part.kind.parse(raw)
                with contextlib.ExitStack() as held:
                    sub.held = held
                    plan = part.kind.plan(part_params, sub)
                    document = checked_facts(part.kind, plan if dry else part.kind.apply(part_params, plan, sub), sub)
            except CeError as exc:
                if dry or isinstance(exc, Canceled):
                    raise
                document = Result(step=part.kind.name, error=exc.to_dict())
            if not dry:
                document.seconds = round(time.monotonic() - started, 3)
            documents.append(document)
            done[part.kind.name] = document
            if not dry and document.error:
                error = document.error
                break
        return documents, error

    def plan(params, ctx: StepContext) -> Plan:
        documents, _ = run_parts(params, ctx, dry=True)
        return Plan(step=name, parts=documents)

    def apply(params, _plan, ctx: StepContext) -> Result:
        documents, error = run_parts(params, ctx, dry=False)
        return Result(step=name, parts=documents, error=error)

    groups = tuple(sorted({g for part in parts for g in part.kind.error_groups}))
    return StepType(name=name, summary=summary, Params=Params, plan=plan, apply=apply, plan_ahead=False,
                    error_groups=groups, **fields)


# ---------------------------------------------------------------- the registry

def step_types(extra_modules: tuple[str, ...] = ()) -> dict[str, StepType]:
    """The product's step types (entry point ``ce.steps``), then each extra module's ``STEPS``, by name."""
    found: list[StepType] = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.extend(entry.load())
    for module in extra_modules:
        found.extend(importlib.import_module(module).STEPS)
    return {kind.name: kind for kind in sorted(found, key=lambda k: k.name)}
