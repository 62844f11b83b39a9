"""The `ce` command line: `ce inspect`, `ce plan` / `ce run` (job files), one command per step that has a command
line (`ce convert`, `ce export`, `ce publish`, `ce reverse-image`, `ce hash`), and `ce serve` / `ce client`.

Every step command builds the step's params from its arguments (the step's own ``CliSpec``) and runs it through
``ce.step.execute``, so the CLI, job files and the server share one validation and one Plan / Result document
(``--json`` prints it as is).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ..errors import CeError
from . import jobs, output, server, smbargs

EXIT_OK, EXIT_ERROR = 0, 1


def main(argv: list[str] | None = None) -> int:
    from ..step import step_types
    types = step_types()
    parser = build_parser(types)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except CeError as exc:
        return report_error(exc, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser(types: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ce", description="Compositing Engine worker")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for kind in types.values():
        if kind.cli:
            add_step_command(sub, kind)
    p = sub.add_parser("inspect", help="describe a disk: format, firmware, Windows, Citrix VDA, tools")
    p.add_argument("disk", help="disk image (raw, qcow2, vhd, vhdx, vmdk) or block device")
    p.add_argument("--root", help="Windows root device when the disk holds several (e.g. /dev/sda3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=jobs.cmd_inspect, kind=types.get("inspect"))
    for name, doc in (("plan", "dry run: list exactly what a job would change, change nothing"),
                      ("run", "apply a job to the disk and report what changed, from what, to what")):
        p = sub.add_parser(name, help=doc)
        p.add_argument("--job", required=True, help='job file: {"type": "prepare", "params": {...}}')
        p.add_argument("disk", help="disk image or block device")
        p.add_argument("--root", help="Windows root device when the disk holds several")
        p.add_argument("--json", action="store_true", help="print the plan / result as JSON")
        p.set_defaults(func=jobs.cmd_job, apply=name == "run", types=types)
    server.register(sub)
    return parser


def add_step_command(sub, kind) -> None:
    p = sub.add_parser(kind.cli.command, help=kind.cli.help)
    kind.cli.arguments(p)
    p.add_argument("--json", action="store_true", help="print the plan / result document as JSON")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; change nothing")
    p.add_argument("--timeout", type=int, default=7200, help="seconds for the whole step (default 7200)")
    if kind.cli.smb:
        smbargs.add_account_arguments(p)
    p.set_defaults(func=cmd_step, kind=kind)


def cmd_step(args) -> int:
    raw = {k: v for k, v in args.kind.cli.params(args).items() if v is not None}
    raw.update(timeout=args.timeout, dryRun=args.dry_run)
    document, error = output.run_step(args.kind, args.kind.parse(raw))
    if error and not args.json:
        raise error
    output.show(args.kind, document, error, args.json)
    return EXIT_ERROR if error else EXIT_OK


def report_error(exc: CeError, args) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": exc.to_dict()}, indent=2))
    else:
        print(f"ce: error [{exc.code}]: {exc.message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
