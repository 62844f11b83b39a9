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
import os
import re
import sys

from .. import __version__
from ..errors import CeError
from . import completion, regdiff, server
from .lazy import Parser, StepTypes, fill_all

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# libraries whose own DEBUG lines are noise to an operator (sh logs every process it runs, line by line): they
# speak at -vv only
THIRD_PARTY = ("sh", "smbprotocol", "spnego", "urllib3", "gunicorn")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_up_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    if getattr(args, "trace", False):
        os.environ["LIBGUESTFS_TRACE"] = "1"       # libguestfs prints each call and its result on stderr
    try:
        try:
            return args.func(args)
        except CeError as exc:
            return report_error(exc, args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    except BrokenPipeError:                # the reader went away (ce ... | head): no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def set_up_logging(verbose: int, quiet: bool) -> None:
    """-q: errors only; default: warnings; -v: what ce does; -vv: everything, the libraries' own lines too."""
    level = logging.ERROR if quiet else logging.WARNING if not verbose else logging.INFO if verbose == 1 \
        else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else max(level, logging.WARNING))


def add_common_options(p: argparse.ArgumentParser, top: bool = False) -> None:
    """-v / -q / -x before or after the command (``ce -v convert ...`` and ``ce convert -v ...``)."""
    default = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("-v", "--verbose", action="count", help="more detail on stderr (-vv: libraries too)",
                   **({"default": 0} if top else default))
    p.add_argument("-q", "--quiet", action="store_true", help="errors only on stderr, no progress",
                   **({"default": False} if top else default))
    p.add_argument("-x", "--trace", action="store_true", help="trace libguestfs calls on stderr (as virt-v2v -x)",
                   **({"default": False} if top else default))
    p.add_argument("--machine-readable", action="store_const", const=2, dest="machine_readable",
                   help="progress as JSON lines {elapsed, percent, message} on stderr",
                   **({"default": None} if top else default))
    p.add_argument("--machine-readable-fd", type=int, metavar="FD", dest="machine_readable",
                   help="the same on file descriptor FD", **({"default": None} if top else default))


def build_parser(types: dict | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``types`` given: those step types, else they are loaded as a command needs them
    (``ce.cli.lazy``)."""
    steps = StepTypes(types)
    parser = argparse.ArgumentParser(
        prog="ce", description="Compositing Engine worker",
        epilog="exit status: 0 done, 1 the step failed or was refused (ce: error [code]), 2 wrong usage, "
               "130 interrupted")
    parser.add_argument("--version", action="version", version=f"ce {__version__}")
    add_common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command, (doc, load) in steps.commands().items():
        sub.add_parser(command, help=doc, fill=lambda p, load=load: add_step_arguments(p, load()))
    add_job_commands(sub, steps)
    server.register(sub)
    completion.register(sub, parser)
    sub.choices["completion"].fill = lambda _: fill_all(parser)
    for name, command in sub.choices.items():
        if name not in steps.commands():
            add_common_options(command)
    return parser


def add_job_commands(sub, steps: StepTypes) -> None:
    """steps, inspect, plan and run: they load every step type, when they are the command given."""
    p = sub.add_parser("steps", help="the step types: their job names, commands and params",
                       fill=lambda p: p.set_defaults(types=steps.all()))
    p.add_argument("--json", action="store_true", help="each type's params as a JSON schema")
    p.set_defaults(func=cmd_steps)
    p = sub.add_parser("inspect", help="describe a disk: format, firmware, Windows, Citrix VDA, tools",
                       fill=lambda p: p.set_defaults(kind=steps.all().get("inspect")))
    p.add_argument("disk", help="disk image (raw, qcow2, vhd, vhdx, vmdk) or block device")
    p.add_argument("--root", help="Windows root device when the disk holds several (e.g. /dev/sda3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_inspect)
    for name, doc in (("plan", "dry run: list exactly what a job would change, change nothing"),
                      ("run", "apply a job to the disk and report what changed, from what, to what")):
        p = sub.add_parser(name, help=doc, fill=lambda p: job_types(p, steps.all()))
        p.add_argument("--job", required=True, help='job file: {"type": "prepare", "params": {...}}')
        p.add_argument("disk", help="disk image or block device")
        p.add_argument("--root", help="Windows root device when the disk holds several")
        p.add_argument("--json", action="store_true", help="print the plan / result as JSON")
        regdiff.add_argument(p)
        p.set_defaults(func=cmd_job, apply=name == "run")


def job_types(p: argparse.ArgumentParser, types: dict) -> None:
    p.epilog = ("job types: " + ", ".join(types) + " (ce steps lists their params); relative paths in a job file "
                "are relative to the file")
    p.set_defaults(types=types)


def cmd_inspect(args) -> int:
    from .jobs import cmd_inspect
    return cmd_inspect(args)


def cmd_job(args) -> int:
    from .jobs import cmd_job
    return cmd_job(args)


def add_step_arguments(p: argparse.ArgumentParser, kind) -> None:
    """A step command's arguments, the CLI's own after the step's, the common options last."""
    from . import smbargs
    kind.cli.arguments(p)
    p.add_argument("--json", action="store_true", help="print the plan / result document as JSON")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; change nothing")
    p.add_argument("--timeout", type=int, default=7200, help="seconds for the whole step (default 7200)")
    regdiff.add_argument(p)
    if kind.cli.smb:
        smbargs.add_account_arguments(p)
    add_common_options(p)
    p.set_defaults(func=cmd_step, kind=kind)


def cmd_step(args) -> int:
    from . import output
    flags = args.kind.cli.flags
    try:
        raw = {k: v for k, v in args.kind.cli.params(args).items() if v is not None}
        raw.update(timeout=args.timeout, dryRun=args.dry_run)
        params, reg_diff = args.kind.parse(raw), regdiff.target(args)
        document, error = output.run_step(args.kind, params, args)
    except CeError as exc:
        exc.args = (in_flag_language(exc.message, flags), *exc.args[1:])
        raise
    if error:
        error.args = (in_flag_language(error.message, flags), *error.args[1:])
        document.error = {**document.error, "message": in_flag_language(document.error["message"], flags)}
    regdiff.write(reg_diff, document, args)
    if error and not args.json:
        raise error
    output.show(args.kind, document, error, args.json)
    return EXIT_ERROR if error else EXIT_OK


def in_flag_language(message: str, flags: dict[str, str]) -> str:
    """A message about params, reworded for the command line: ``params.outputSizeMb`` -> ``--size-mb``, and a
    param's bare name (``overwriteTargetFile``) -> its flag where the name cannot be an ordinary word (it has a
    capital letter); a job file and the API keep the params' names."""
    for param in sorted(flags, key=len, reverse=True):
        flag = flags[param]
        message = re.sub(rf"\bparams\.{re.escape(param)}(?:\.\d+)?(?![\w.])", flag, message)
        if param != param.lower():
            message = re.sub(rf"(?<![\w.$-]){re.escape(param)}\b", flag, message)
    return message


def cmd_steps(args) -> int:
    if args.json:
        print(json.dumps({k.name: {"command": k.cli.command if k.cli else None, "summary": k.summary,
                                   "diskParams": list(k.disk_params), "paramsSchema": k.Params.model_json_schema(),
                                   "factsSchema": k.facts_schema()}
                          for k in args.types.values()}, indent=2))
        return EXIT_OK
    for kind in args.types.values():
        command = f"ce {kind.cli.command}" if kind.cli else "ce inspect" if kind.name == "inspect" else \
            "ce plan/run --job"
        flags = kind.cli.flags if kind.cli else {}
        print(f"{kind.name:<16} {command:<20} {kind.summary}")
        print(f"{'':<16} params: " + ", ".join(f"{name} ({flags[name]})" if name in flags else name
                                               for name in kind.Params.model_fields))
    return EXIT_OK


def report_error(exc: CeError, args) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": exc.to_dict()}, indent=2))
    else:
        print(f"ce: error [{exc.code}]: {exc.message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
