"""`ce inspect DISK` and job files: `ce plan --job FILE DISK` (dry run) and `ce run --job FILE DISK` (apply).

A job file is ``{"type": "prepare", "params": {...}}`` with the service's parameter names; the disk (and the
Windows root) come from the command line and replace the file's.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import InvalidJob, InvalidParams
from ..step import StepType
from .output import run_step, show

EXIT_OK, EXIT_ERROR = 0, 1


def load_job(path: str, types: dict[str, StepType], **overrides) -> tuple[StepType, object]:
    """Read a job file; ``overrides`` (disk, root, dryRun from the command line) replace its params."""
    try:
        job = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidJob(f"cannot read job file {path}: {exc}") from None
    if not isinstance(job, dict) or job.get("type") not in types:
        raise InvalidJob(f"{path}: \"type\" must be one of {', '.join(types)}")
    raw = job.get("params", {})
    if not isinstance(raw, dict):
        raise InvalidJob(f"{path}: \"params\" must be an object")
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    kind = types[job["type"]]
    try:
        return kind, kind.parse(raw)
    except InvalidParams as exc:
        raise InvalidJob(f"{path}: {exc.message}") from None


def cmd_job(args) -> int:
    kind, params = load_job(args.job, args.types, disk=args.disk, root=args.root,
                            dryRun=True if not args.apply else None)
    document, error = run_step(kind, params)
    show(kind, document, error, args.json)
    return EXIT_ERROR if error else EXIT_OK


def cmd_inspect(args) -> int:
    """The inspect step's report: its facts and warnings as JSON (the report's own shape), or lines for people."""
    params = args.kind.parse({"disk": args.disk, "root": args.root})
    document, _ = run_step(args.kind, params)
    if args.json:
        print(json.dumps({**document.facts, "warnings": [w.model_dump() for w in document.warnings]}, indent=2))
    else:
        show(args.kind, document, None, as_json=False)
    return EXIT_OK
