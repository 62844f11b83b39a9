"""What the CLI prints: progress on stderr while a step runs, then its plan or result -- as JSON, or as lines for
people made by the change kinds (``ce.changes.describe``) and the step's own ``describe``."""
from __future__ import annotations

import json
import sys
from collections import Counter

from ..changes import Plan, Result, describe
from ..errors import CeError, StepFailed
from ..step import StepContext, execute


class ConsoleContext(StepContext):
    """Progress on stderr: a bar that redraws in place on a terminal, nothing otherwise (--json stays clean) or
    with -q."""
    quiet = False

    def progress(self, percent: float, message: str = "") -> None:
        if self.quiet or not sys.stderr.isatty():
            return
        filled = int(max(0.0, min(percent, 100.0)) / 100 * 30)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {percent:5.1f}% {message[:60]:<60}")
        sys.stderr.flush()

    def done(self) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\r" + " " * 100 + "\r")


def run_step(kind, params, quiet: bool = False) -> tuple[Plan | Result, CeError | None]:
    """Run a step in this process; a StepFailed still yields its partial result."""
    ctx = ConsoleContext()
    ctx.quiet = quiet
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
    lines.append(summary(document, len(backups)))
    print("\n".join(lines))


def summary(document: Plan | Result, backups: int) -> str:
    """The one line every run ends with: changes per kind, backups, warnings, time."""
    changes, warnings = _tally(document)
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(changes.items()))
    total = sum(changes.values())
    if isinstance(document, Plan):
        what = f"dry run: {total} change{'s' * (total != 1)} would be made" if total else "dry run: nothing to change"
    else:
        state = "failed" if document.error else "done"
        what = f"{state} in {document.seconds:.1f} s: {total} change{'s' * (total != 1)} applied"
    return "; ".join(filter(None, [what + (f" ({kinds})" if kinds else ""),
                                   f"{backups} backup{'s' * (backups != 1)}" if backups else "",
                                   f"{warnings} warning{'s' * (warnings != 1)}"]))


def _tally(document: Plan | Result) -> tuple[Counter, int]:
    """(applied or planned changes per kind, warnings), the parts of a sequence included."""
    if isinstance(document, Plan):
        changes = Counter(c.kind for c in document.changes)
    else:
        changes = Counter(o.change.kind for o in document.outcomes if o.status == "applied")
    warnings = len(document.warnings)
    for part in document.parts:
        more, more_warnings = _tally(part)
        changes += more
        warnings += more_warnings
    return changes, warnings
