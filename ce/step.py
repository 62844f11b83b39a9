"""Step types and the context a running step reports through.

A step module in ``steps/`` registers itself at import time::

    STEP = register(StepType(name="export", summary="...", Params=Params, run=run, disk_params=("disk",)))

``run(params, ctx) -> dict`` returns the result document (JSON-able). It reports progress, warnings and log lines
through ``ctx`` and honours ``ctx.canceled()`` between blocks of work; the server also stops a canceled step by
killing its process group, so a step must never leave a half-written file under its final name.

The CLI and the server both find steps through ``load_all()``, so adding a step never means editing either.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ValidationError

from .errors import Canceled, CeError, InvalidParams, StepFailed

StepCanceled = Canceled          # the one cancel lives in ce.errors

REGISTRY: dict[str, "StepType"] = {}


@dataclass(frozen=True)
class StepType:
    name: str
    summary: str
    Params: type[BaseModel]
    run: Callable[[BaseModel, "StepContext"], dict]
    disk_params: tuple[str, ...] = ()        # params naming attached disks; the server locks each one
    validate: Callable[[BaseModel], None] | None = None   # refusals that need no disk, before any work

    def parse(self, params: dict) -> BaseModel:
        """Validate raw params; the first problem becomes one line naming the field."""
        try:
            parsed = self.Params.model_validate(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "params"
            more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
            raise InvalidParams(f"params.{where}: {first['msg']}{more}", field=where) from None
        if self.validate:
            self.validate(parsed)
        return parsed

    def disks(self, params: BaseModel) -> list[str]:
        return [v for v in (getattr(params, name, None) for name in self.disk_params) if v]


def register(step: StepType) -> StepType:
    REGISTRY[step.name] = step
    return step


def load_all() -> dict[str, StepType]:
    """Import every module under ``steps`` (each registers itself) and return the registry."""
    import steps
    for mod in pkgutil.walk_packages(steps.__path__, prefix="steps."):
        importlib.import_module(mod.name)
    return dict(sorted(REGISTRY.items()))


def get(name: str) -> StepType:
    types = load_all()
    if name not in types:
        raise InvalidParams(f"unknown step type {name!r}; known: {', '.join(types)}", field="type")
    return types[name]


@dataclass
class StepContext:
    """What a running step may touch besides its params. Subclassed by the CLI (progress bar) and the server."""
    step_id: str = "local"
    workdir: Path | None = None
    warnings: list[dict] = field(default_factory=list)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ce.step"))

    def progress(self, percent: float, message: str = "") -> None:
        """percent in 0..100; message is a short present-tense phrase ("converting to vhdx")."""

    def warn(self, code: str, message: str) -> None:
        self.warnings.append({"code": code, "message": message})
        self.log.warning("%s: %s", code, message)

    def canceled(self) -> bool:
        return self.cancel_event.is_set()

    def check_canceled(self) -> None:
        if self.canceled():
            raise StepCanceled("the step was canceled")
