"""The `ce` command line: `ce inspect DISK [--json]` (plan / run / serve arrive with their issues)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .errors import CeError
from .step import StepContext, StepFailed

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ce", description="Compositing Engine worker")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    from .cli_disks import add_disk_commands   # convert, export, publish, reverse-image, hash
    add_disk_commands(sub)
    p = sub.add_parser("inspect", help="describe a disk: format, firmware, Windows, Citrix VDA, tools")
    p.add_argument("disk", help="disk image (raw, qcow2, vhd, vhdx, vmdk) or block device")
    p.add_argument("--root", help="Windows root device when the disk holds several (e.g. /dev/sda3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_inspect)
    for name, doc in (("plan", "dry run: list exactly what a job would change, change nothing"),
                      ("run", "apply a job to the disk and report what changed, from what, to what")):
        p = sub.add_parser(name, help=doc)
        p.add_argument("--job", required=True, help='job file: {"type": "prepare", "params": {...}}')
        p.add_argument("disk", help="disk image or block device")
        p.add_argument("--root", help="Windows root device when the disk holds several")
        p.add_argument("--json", action="store_true", help="print the plan / result as JSON")
        p.set_defaults(func=cmd_job, apply=name == "run")
    from .cli_server import register as register_server
    register_server(sub)
    return parser


def report_error(exc: CeError, args) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": exc.to_dict()}, indent=2))
    else:
        print(f"ce: error [{exc.code}]: {exc.message}", file=sys.stderr)
    return EXIT_ERROR


def cmd_inspect(args) -> int:
    from steps.inspect import inspect_path
    report = inspect_path(args.disk, root=args.root)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(format_report(report))
    return EXIT_OK


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def describe_filesystem(fs: dict) -> str:
    text = f"{fs['device']} {fs['type']}"
    if fs.get("label"):
        text += f" '{fs['label']}'"
    if fs.get("role") and fs["role"] != "basic-data":
        text += f" [{fs['role']}]"
    if fs.get("ntfs_state") not in (None, "clean"):
        text += f" ({fs['ntfs_state']})"
    return text


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


def run_step(kind, params) -> tuple[dict, CeError | None]:
    """Run a step in this process; a StepFailed still yields its partial result."""
    ctx = ConsoleContext()
    try:
        return kind.run(params, ctx), None
    except StepFailed as exc:
        return exc.result, exc
    finally:
        ctx.done()


def cmd_job(args) -> int:
    from .plan import ApplyResult, Plan
    from .runner import load_job
    kind, params = load_job(args.job, disk=args.disk, root=args.root, dryRun=True if not args.apply else None)
    result, error = run_step(kind, params)
    if args.json:
        print(json.dumps({**result, **({"error": error.to_dict()} if error else {})}, indent=2))
    elif kind.name == "prepare":
        print(format_outcome(ApplyResult.model_validate(result) if "outcomes" in result
                             else Plan.model_validate(result)))
    else:
        print(json.dumps(result, indent=2))
    return EXIT_ERROR if error else EXIT_OK


def describe_change(c) -> str:
    if c.kind == "registry_set":
        old = "absent" if c.old is None else repr(c.old["value"])
        return f"set    {c.hive}\\{c.key}\\{c.name or '(default)'} = {c.new!r} ({c.type}, was {old})"
    if c.kind == "registry_delete_value":
        return f"delete {c.hive}\\{c.key}\\{c.name} (was {c.old['value']!r})"
    if c.kind == "registry_delete_key":
        return f"delete {c.hive}\\{c.key}\\ (whole key)"
    if c.kind == "first_boot_action":
        return f"stage  first-boot action {c.name} (retries {c.retries}{', required' if c.required else ''})"
    return f"write  {c.path} ({c.size} bytes, sha256 {c.sha256[:12]}…{', replaces a file' if c.old_sha256 else ''})"


def format_outcome(outcome) -> str:
    from .plan import ApplyResult
    if isinstance(outcome, ApplyResult):
        lines = [f"{o.status:13} {describe_change(o.change)}" for o in outcome.outcomes]
        lines += [f"backup        {c['backup_path']}" for c in outcome.commits if c.get("backup_created")]
        if outcome.error:
            lines.append(f"error [{outcome.error['code']}]: {outcome.error['message']}")
    else:
        lines = [f"would {describe_change(c)}" + (f"  -- {c.reason}" if c.reason else "") for c in outcome.changes]
        lines = lines or ["nothing to change"]
    lines += [f"warning [{w.code}]: {w.message}" for w in outcome.warnings]
    return "\n".join(lines)


def format_report(r) -> str:
    rows = [
        ("Disk", f"{r.disk.path} ({r.disk.format}{'/' + r.disk.subformat if r.disk.subformat else ''}, "
                 f"{human_size(r.disk.virtual_size)} virtual)"),
        ("Partitions", f"{r.partition_table.upper()}, firmware {r.firmware.upper()}"),
        ("Filesystems", ", ".join(describe_filesystem(fs) for fs in r.disk.filesystems)),
        ("Windows", f"{r.os.product} — {r.os.product_name} ({r.os.edition}, {r.os.installation_type})"),
        ("Version", f"{r.os.version}" + (f" ({r.os.release})" if r.os.release else "") + f", {r.os.arch}"),
        ("Hostname", f"{r.os.hostname} (NetBIOS {r.os.computer_name or '?'})"),
        ("Domain", f"{r.domain.dns or r.domain.netbios} ({r.domain.netbios})" if r.domain.joined
                   else f"not joined (workgroup {r.domain.netbios or '?'})"),
        ("Control set", f"{r.os.current_control_set} (root {r.os.root_device})"),
    ]
    if r.vda.installed:
        rows += [("Citrix VDA", f"{r.vda.version} (release {r.vda.release}{', LTSR' if r.vda.ltsr else ', CR'})"),
                 ("Controllers", f"{' '.join(r.vda.controllers) or '-'} (from {r.vda.controller_source})")]
        if r.vda.farm_guid:
            rows.append(("FarmGUID", r.vda.farm_guid))
    else:
        rows.append(("Citrix VDA", "not installed"))
    for name, label in (("pvs", "PVS target"), ("mcsio", "MCS IO"), ("misa", "Machine Identity")):
        found = r.components.get(name)
        rows.append((label, f"yes {found.version}".rstrip() if found else "no"))
    rows.append(("Hypervisor tools", ", ".join(f"{t.name} {t.version}".rstrip() for t in r.tools) or "none"))
    if r.domain.pending_unjoin:
        rows.append(("Pending", f"domain unjoin from {r.domain.pending_unjoin} at first boot"))
    if r.first_boot:
        fb = r.first_boot
        rows.append(("First boot", ("armed" if fb.armed else "disarmed") + f", {fb.boots} boot(s): " + ", ".join(
            f"{a['name']} {a['status']}" + (f" ({a['attempts']}/{a['retries']})" if a["attempts"] else "")
            for a in fb.staged)))
    flags = [f for f, on in (("hibernated", r.state.hibernated), ("unclean", r.state.unclean),
                             ("BitLocker", r.state.bitlocker)) if on]
    flags += [f"dirty hive {h}" for h in r.state.dirty_hives]
    rows.append(("State", ", ".join(flags) or "clean"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"warning [{w.code}]: {w.message}" for w in r.warnings]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
