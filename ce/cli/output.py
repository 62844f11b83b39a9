"""What the CLI prints: progress on stderr while a step runs, then its plan or result -- as JSON, or as lines for
people made by the change kinds (``ce.changes.describe``) and the step's own ``describe``."""
from __future__ import annotations

import json
import sys

from ..changes import Plan, Result, describe
from ..errors import CeError, StepFailed
from ..step import StepContext, execute


class ConsoleContext(StepContext):
    """Progress on stderr: a bar that redraws in place on a terminal, nothing otherwise (--json stays clean)."""

    def progress(self, percent: float, message: str = "") -> None:
        if not sys.stderr.isatty():
            return
        filled = int(max(0.0, min(percent, 100.0)) / 100 * 30)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {percent:5.1f}% {message[:60]:<60}")
        sys.stderr.flush()

    def done(self) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\r" + " " * 100 + "\r")


def run_step(kind, params) -> tuple[Plan | Result, CeError | None]:
    """Run a step in this process; a StepFailed still yields its partial result."""
    ctx = ConsoleContext()
    try:
        return execute(kind, params, ctx), None
    except StepFailed as exc:
        return Result.model_validate(exc.result), exc
    finally:
        ctx.done()


def show(kind, document: Plan | Result, error: CeError | None, as_json: bool) -> None:
    if as_json:
        body = document.model_dump(mode="json")
        print(json.dumps({**body, **({"error": error.to_dict()} if error else {})}, indent=2))
        return
    lines = [line for line in describe(document) if not line.startswith("warning [")]
    if kind.describe:
        lines = [line for line in lines if line != "nothing to change"] + kind.describe(document)
    backups = [c["backup_path"] for c in document.facts.get("commits", []) if c.get("backup_created")]
    lines += [f"backup        {path}" for path in backups]
    lines += [f"warning [{w.code}]: {w.message}" for w in document.warnings]
    print("\n".join(lines))
