r"""`ce convert`, `ce export`, `ce publish`, `ce reverse-image`, `ce hash`: the disk steps from the command line.

Each command builds the step's params from its arguments and runs the registered step, so the CLI, job files
and the server share one validation and one result document (``--json`` prints it as is). An SMB file or folder
is written ``\\host\share\folder[\file]``, ``//host/share/...`` or ``smb://host[:port]/share/...``. The SMB
password comes from ``$CE_SMB_PASSWORD`` or a prompt, never from the command line (it would show in ``ps`` and
the shell history); the user name from ``--user`` or ``$CE_SMB_USER``.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys

from .smb import SmbLocation
from .step import InvalidParams, get

PASSWORD_ENV, USER_ENV, DOMAIN_ENV = "CE_SMB_PASSWORD", "CE_SMB_USER", "CE_SMB_DOMAIN"
SMB_PREFIX = re.compile(r"^(\\\\|//|smb://)", re.IGNORECASE)
FORMAT_NAMES = {"vhdx": "VhdxDiskFormat", "vhd": "VhdDiskFormat"}


def add_disk_commands(sub) -> None:
    p = sub.add_parser("convert", help="convert a disk between raw, qcow2, vhd, vhdx and vmdk (local or SMB)")
    p.add_argument("source", help=r"disk file, block device, or an SMB file \\host\share\folder\disk.vhdx")
    p.add_argument("output", help="output file, local or on SMB")
    p.add_argument("-O", "--format", required=True, choices=("raw", "qcow2", "vhd", "vhdx", "vmdk"))
    p.add_argument("--subformat", help="vhd/vhdx: dynamic|fixed; vmdk: monolithicSparse|streamOptimized")
    p.add_argument("--source-format", help="source format when probing must not decide")
    p.add_argument("--azure-fixed", action="store_true", help="fixed VHD rounded up to a whole MiB (Azure)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _common(p, convert_params)

    p = sub.add_parser("export", help="export a disk to a VHDX (or VHD) file on an SMB share")
    p.add_argument("disk", help="disk file or block device")
    p.add_argument("location", help=r"SMB folder: \\host\share\folder")
    p.add_argument("--name", help="file name on the share (default: the disk's name); the extension is added")
    p.add_argument("--format", choices=tuple(FORMAT_NAMES), default="vhdx")
    p.add_argument("--fixed", action="store_true", help="a fixed (fully allocated) VHD(X) instead of dynamic")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file (overwriteTargetFile)")
    p.add_argument("--hash", action="store_true", help="also return the md5 and sha256 of the disk (hashDisk)")
    _common(p, export_params)

    p = sub.add_parser("publish", help="publish a prepared disk as a vDisk in a PVS store on SMB")
    p.add_argument("disk", help="disk file or block device")
    p.add_argument("store", help=r"the PVS store folder: \\host\share\store")
    p.add_argument("--vdisk", required=True, help="vDisk name (no extension)")
    p.add_argument("--format", choices=tuple(FORMAT_NAMES), default="vhdx")
    p.add_argument("--overwrite", action="store_true", help="replace an existing vDisk file")
    p.add_argument("--hash", action="store_true", help="also return the md5 and sha256 of the disk")
    _common(p, publish_params)

    p = sub.add_parser("reverse-image", help="write a VHD(X) from an SMB share onto a disk as raw blocks")
    p.add_argument("image", help=r"the SMB file: \\host\share\folder\disk.vhdx")
    p.add_argument("disk", help="the output disk: block device or file (written from offset 0)")
    p.add_argument("--size-mb", type=int, help="MiB to write (default: the image's size)")
    p.add_argument("--format", choices=tuple(FORMAT_NAMES), help="default: from the file's extension")
    p.add_argument("--overwrite", action="store_true", help="allow a disk that is not empty (overwriteOutput)")
    _common(p, reverse_params)

    p = sub.add_parser("hash", help="md5 / sha256 of a disk's contents (or of the file with --file)")
    p.add_argument("disk", help="disk file or block device")
    p.add_argument("-a", "--algorithm", action="append", choices=("md5", "sha256"),
                   help="repeat for several (default: md5 and sha256)")
    p.add_argument("--file", action="store_true", help="hash the file's own bytes, not the disk's contents")
    p.add_argument("--source-format", help="the disk's format when probing must not decide")
    p.add_argument("--expect", action="append", default=[], metavar="ALG:HEX", help="fail unless the hash matches")
    _common(p, hash_params, smb=False)


def _common(p: argparse.ArgumentParser, build, smb: bool = True) -> None:
    p.add_argument("--json", action="store_true", help="print the plan / result document as JSON")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; change nothing")
    p.add_argument("--timeout", type=int, default=7200, help="seconds for the whole step (default 7200)")
    if smb:
        p.add_argument("--user", help=f"SMB user name (default ${USER_ENV}); password from ${PASSWORD_ENV} or a "
                                      "prompt")
        p.add_argument("--domain", help=f"SMB account's domain (default ${DOMAIN_ENV})")
        p.add_argument("--port", type=int, help="SMB port (default 445, or the one in an smb:// URL)")
        p.add_argument("--encrypt", action="store_true", help="require SMB3 encryption")
    p.set_defaults(func=cmd_disk_step, build=build)


# ---------------------------------------------------------------- params from arguments

def is_smb(text: str) -> bool:
    return bool(SMB_PREFIX.match(text))


def split_file(text: str) -> tuple[str, str]:
    r"""\\host\share\folder\file -> (\\host\share\folder, file)."""
    parsed = SmbLocation.parse(text)
    if not parsed.folder:
        raise InvalidParams(f"{text!r} names a share, not a file on it: add the file name")
    folder, _, name = parsed.folder.rpartition("\\")
    if parsed.port:
        return f"smb://{parsed.host}:{parsed.port}/{parsed.share}" + (f"/{folder.replace(chr(92), '/')}" if folder
                                                                       else ""), name
    return str(SmbLocation(parsed.host, parsed.share, folder)), name


def storage(args, location: str) -> dict:
    user = args.user or os.environ.get(USER_ENV)
    if not user:
        raise InvalidParams(f"an SMB location needs a user name: --user NAME or ${USER_ENV}")
    return {"Location": location, "port": args.port, "encrypt": args.encrypt,
            "credentials": {"username": user, "password": _password(user),
                            "domain": args.domain or os.environ.get(DOMAIN_ENV, "")}}


def _password(user: str) -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password is not None:
        return password
    if not sys.stdin.isatty():
        raise InvalidParams(f"no SMB password: set ${PASSWORD_ENV} (it is never taken from the command line)")
    return getpass.getpass(f"SMB password for {user}: ")


def convert_params(args) -> dict:
    params = {"outputFormat": args.format, "subformat": args.subformat, "azureFixed": args.azure_fixed,
              "overwriteOutput": args.overwrite, "sourceFormat": args.source_format}
    if is_smb(args.source):
        folder, name = split_file(args.source)
        params.update(inputStorageLocation=storage(args, folder), inputImageFilename=name)
    else:
        params["source"] = args.source
    if is_smb(args.output):
        folder, name = split_file(args.output)
        params.update(outputStorageLocation=storage(args, folder), outputImageFilename=name)
    else:
        params["output"] = args.output
    return params


def export_params(args) -> dict:
    name = args.name or os.path.splitext(os.path.basename(args.disk.rstrip("/")))[0]
    return {"disk": args.disk, "outputStorageLocation": storage(args, args.location), "SmbDiskName": name,
            "SmbDiskFormat": FORMAT_NAMES[args.format], "SmbDiskSubformat": "fixed" if args.fixed else "dynamic",
            "overwriteTargetFile": args.overwrite, "hashDisk": args.hash}


def publish_params(args) -> dict:
    return {"disk": args.disk, "outputStorageLocation": storage(args, args.store), "vDiskName": args.vdisk,
            "SmbDiskFormat": FORMAT_NAMES[args.format], "overwriteTargetFile": args.overwrite,
            "hashDisk": args.hash}


def reverse_params(args) -> dict:
    folder, name = split_file(args.image)
    return {"disk": args.disk, "inputStorageLocation": storage(args, folder), "inputImageFilename": name,
            "inputImageFormat": FORMAT_NAMES.get(args.format), "outputSizeMb": args.size_mb,
            "overwriteOutput": args.overwrite}


def hash_params(args) -> dict:
    expected = {}
    for item in args.expect:
        algorithm, _, value = item.partition(":")
        if not value:
            raise InvalidParams(f"--expect {item!r}: write ALGORITHM:HEX, e.g. md5:0123...")
        expected[algorithm.lower()] = value
    algorithms = args.algorithm or sorted({"md5", "sha256"} | set(expected))
    return {"disk": args.disk, "algorithms": algorithms, "of": "file" if args.file else "content",
            "format": args.source_format, "expected": expected}


# ---------------------------------------------------------------- running and printing

def step_name(command: str) -> str:
    return {"reverse-image": "reverseImage"}.get(command, command)


def cmd_disk_step(args) -> int:
    from .cli import EXIT_ERROR, EXIT_OK, run_step
    kind = get(step_name(args.command))
    raw = {k: v for k, v in args.build(args).items() if v is not None}
    raw.update(timeout=args.timeout, dryRun=args.dry_run)
    params = kind.parse(raw)
    result, error = run_step(kind, params)
    if error:
        raise error
    print(json.dumps(result, indent=2) if args.json else describe(result))
    return EXIT_ERROR if error else EXIT_OK


def describe(r: dict) -> str:
    from .cli import human_size
    step, dry = r["step"], r.get("dryRun")
    lines = []
    if step in ("export", "publish"):
        s, t = r["source"], r["target"]
        verb = "would " + step if dry else step + "ed"
        lines.append(f"{verb} {s['path']} ({s['format']}, {human_size(s['virtual_size'])}) to {t['path']} "
                     f"({t['format'].upper()} {t['subformat']}{', replacing the existing file' if t.get('replaces_existing') else ''})")
        if dry:
            lines.append(f"share free {human_size(r['space']['share_free'])}, needs "
                         f"{human_size(r['space']['required'])}; scratch {r['scratch']['directory']}")
        else:
            lines.append(f"file {human_size(t['file_size'])}, {human_size(r['bytes_sent'] or 0)} sent in "
                         f"{r['seconds']:.1f} s")
        if t.get("pvp"):
            lines.append(f"PVS properties (.pvp): {t['pvp']}")
    elif step == "convert":
        s, o = r["source"], r["output"]
        where = o.get("path") or f"{o['location']}\\{o['name']}"
        src = s.get("path") or f"{s['location']}\\{s['name']}"
        lines.append(f"{'would convert' if dry else 'converted'} {src} to {where} ({o['format']}"
                     f"{'/' + o['subformat'] if o.get('subformat') else ''})")
        if not dry:
            lines.append(f"virtual size {human_size(o['virtual_size'])}, file {human_size(o['file_size'])}, "
                         f"{r['seconds']:.1f} s")
    elif step == "reverseImage":
        s, t = r["source"], r["target"]
        lines.append(f"{'would write' if dry else 'wrote'} {s['location']}\\{s['name']} ({s['format']}, "
                     f"{human_size(s['virtual_size'])}) onto {t['disk']} ({human_size(t['output_size'])})")
        if not dry:
            lines.append(f"{r['seconds']:.1f} s")
    elif step == "hash":
        lines.append(f"{r['disk']} ({r['format']}, {r['of']}, {human_size(r['size'])})")
    for algorithm, value in (r.get("hashes") or {}).items():
        lines.append(f"{algorithm:<7} {value}")
    return "\n".join(lines)

