"""`ce inspect DISK` and job files: `ce plan --job FILE DISK` (dry run) and `ce run --job FILE DISK` (apply).

A job file is ``{"type": "prepare", "params": {...}}`` with the service's parameter names; the disk (and the
Windows root) come from the command line. A file path in the job (its disks, ``payloads``) that is relative is
relative to the job file, not to the working directory; a job whose ``disk`` names another disk than the command
line's is refused rather than silently overridden.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..document import SCHEMA_VERSION
from ..errors import InvalidJob, InvalidParams
from ..step import StepType
from .regdiff import target as reg_diff_target, write as write_reg_diff
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
    kind = types[job["type"]]
    raw = relative_to(Path(path).parent, raw, (*kind.disk_params, "payloads"))
    for name, value in overrides.items():
        if name in kind.disk_params and value is not None and isinstance(raw.get(name), str) \
                and os.path.realpath(raw[name]) != os.path.realpath(value):
            raise InvalidJob(f"{path}: params.{name} is {raw[name]} but the command line names {value}: remove "
                             f"one of them")
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return kind, kind.parse(raw)
    except InvalidParams as exc:
        raise InvalidJob(f"{path}: {exc.message}") from None


def relative_to(base: Path, raw: dict, names: tuple[str, ...]) -> dict:
    """``raw`` with each relative path among ``names`` made absolute against ``base`` (the job file's folder)."""
    return {k: str(base.resolve() / v) if k in names and isinstance(v, str) and v and not os.path.isabs(v) else v
            for k, v in raw.items()}


def cmd_job(args) -> int:
    kind, params = load_job(args.job, args.types, disk=args.disk, root=args.root,
                            dryRun=True if not args.apply else None)
    reg_diff = reg_diff_target(args)
    document, error = run_step(kind, params, args)
    show(kind, document, error, args.json)
    write_reg_diff(reg_diff, document, args)
    return EXIT_ERROR if error else EXIT_OK


def cmd_inspect(args) -> int:
    """The inspect step's report: its facts and warnings as JSON (the report's own shape), or lines for people."""
    params = args.kind.parse({"disk": args.disk, "root": args.root})
    document, _ = run_step(args.kind, params, args)
    if args.json:
        print(json.dumps({"schemaVersion": SCHEMA_VERSION, **document.facts,
                          "warnings": [w.model_dump() for w in document.warnings]}, indent=2))
    else:
        show(args.kind, document, None, as_json=False)
    return EXIT_OK
