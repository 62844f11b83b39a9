"""ce's disk paths against the tools a user would reach for instead, side by side in one run on the same data.

    python bench/disks.py [--size-mb 1024[,4096,8192]] [--repeat 3] [--dir DIR] [--data dense|half-zero]
                          [--pairs main|all] [--both-methods]
                          [--skip startup|convert|export|export-qcow2|hash]

Two source disks per ``--size-mb``: *dense* (random bytes) and *half-zero* (2 MiB random, 2 MiB of written zeros,
alternating; every byte allocated, as a used-then-cleaned disk is). For each, the contenders of a comparison run
interleaved (ce, reference, ce, reference, ...) ``--repeat`` times; the median counts, and the spread is the
lowest and highest ratio of one round's pair:

* convert (``ce.disks.convert``, which flushes its output) raw -> vhdx / fixed vhdx / vhd / fixed vhd / vmdk /
  qcow2 and back to raw vs ``qemu-img convert`` of the same pair with its default flags (what a user types), and vs
  ``cp``; every reference is followed by ``sync FILE`` (qemu-img convert writes with cache=unsafe and flushes
  nothing, as cp does). ``--pairs main`` (the default) runs vhdx, fixed vhd, vmdk, qcow2 and vhdx -> raw;
* the CLI's own start-up (``ce convert --help``), measured apart so the byte path is judged on its own, and one
  whole-process ``ce convert -O vhdx`` vs ``qemu-img convert -O vhdx`` (+ sync) to show what it adds per size;
* SMB export (the whole export step: the raw disk streamed into a VHDX on the share) and the upload alone
  (``SmbShare.upload`` of a VHDX qemu-img made) vs Samba's ``smbclient put`` of that VHDX, against a throwaway smbd
  on 127.0.0.1; for information, the export of the same disk as qcow2, which is converted in scratch space first.
  Like for like: ce signs every message (SMB 3.1.1, AES-GMAC, its production setting), so the reference is
  ``smbclient --client-protection=sign``; smbclient's default, which signs only when the server requires it (this
  smbd does not), is printed for information;
* hash (``ce.hashing``) vs ``md5sum`` / ``sha256sum``.

Times are printed as seconds per GiB, so several sizes show whether the cost grows linearly. The ratio is
reference time / ce time: above 1 means ce is faster. Targets: >= 1.0 against qemu-img convert, md5sum and
sha256sum; >= 0.9 against cp and smbclient on dense data, > 1 against cp on the half-zero image. The machine is
shared, so expect +-30 % between runs; the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import compile_ce  # noqa: E402
from ce import disks, hashing  # noqa: E402
from ce.disks import conversion, layouts  # noqa: E402
from ce.disks.formats import create_options  # noqa: E402
from ce.smb import Credentials, SmbShare  # noqa: E402
from ce.step import StepContext, execute, step_types  # noqa: E402
from tests.support.smbserver import PASSWORD, USER, SambaServer  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
QEMU_TARGET, DENSE_TARGET, SPARSE_TARGET = 1.0, 0.9, 1.0
INFO = "info: not like for like"
DATA_KINDS = ("dense", "half-zero")
# (label, format, subformat, in --pairs main)
FORWARD = [("raw->vhdx", "vhdx", None, True), ("raw->fixed vhdx", "vhdx", "fixed", False),
           ("raw->vhd", "vpc", None, False), ("raw->fixed vhd", "vpc", "fixed", True),
           ("raw->vmdk", "vmdk", None, True), ("raw->qcow2", "qcow2", None, True)]
BACKWARD = [("vhdx->raw", "vhdx", True), ("vhd->raw", "vpc", False), ("vmdk->raw", "vmdk", False),
            ("qcow2->raw", "qcow2", False)]


@dataclass
class Row:
    operation: str
    data: str
    ours: list[float]                  # seconds, one per round
    reference_name: str
    reference: list[float]             # seconds, same rounds
    target: float | None               # None: printed for information only
    note: str = ""
    size_mb: int = 0
    ours_cpu: list[float] | None = None
    reference_cpu: list[float] | None = None

    @property
    def cpu_ratio(self) -> float | None:
        if not (self.ours_cpu and self.reference_cpu):
            return None
        return statistics.median(self.reference_cpu) / max(statistics.median(self.ours_cpu), 1e-9)

    @property
    def ratio(self) -> float:
        return statistics.median(self.reference) / statistics.median(self.ours)

    @property
    def spread(self) -> tuple[float, float]:
        """The lowest and highest ratio of one interleaved round's pair."""
        ratios = [reference / ours for ours, reference in zip(self.ours, self.reference)]
        return min(ratios), max(ratios)

    def per_gib(self, times: list[float]) -> float:
        return statistics.median(times) * 1024 / self.size_mb


def compared(operation: str, data: str, times: dict, ours: str, reference_name: str, reference: str,
             target: float | None, note: str = "") -> Row:
    return Row(operation, data, times[ours], reference_name, times[reference], target, note,
               ours_cpu=times[ours + " cpu"], reference_cpu=times[reference + " cpu"])


def make_source(directory: Path, size_mb: int, kind: str) -> Path:
    path = directory / f"{kind}.raw"
    with open(path, "wb") as f:
        for i in range(size_mb):
            f.write(os.urandom(MiB) if kind == "dense" or (i // 2) % 2 == 0 else bytes(MiB))
    subprocess.run(["sync"], check=True)
    return path


def interleaved(repeat: int, contenders: dict) -> dict[str, list[float]]:
    """Seconds per round for each contender; ``contenders`` maps a name to ``action`` or ``(action, before)``, and
    each round runs every contender once, in order, so a load spike on the shared machine hits all of them. The CPU
    seconds of each run (this process and the programs it ran) are kept as ``NAME cpu``: on a machine this loaded
    they are the steadier measure of what a method costs."""
    times: dict[str, list[float]] = {}
    for _ in range(repeat):
        for name, contender in contenders.items():
            action, before = contender if isinstance(contender, tuple) else (contender, None)
            if before:
                before()
            cpu, started = cpu_seconds(), time.perf_counter()
            action()
            times.setdefault(name, []).append(time.perf_counter() - started)
            times.setdefault(name + " cpu", []).append(cpu_seconds() - cpu)
    return times


def cpu_seconds() -> float:
    ours, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return ours.ru_utime + ours.ru_stime + children.ru_utime + children.ru_stime


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def remove(*paths: Path):
    def clean() -> None:
        for path in paths:
            if path.exists():
                path.unlink()
        subprocess.run(["sync"], check=True)
    return clean


def clear(directory: Path, *patterns: str):
    """Remove every file matching ``patterns`` when called: each run starts with the last one's output gone, so at
    most one output of the source's size is on disk at a time (8 GiB sources on a shared disk)."""
    return lambda: remove(*(path for pattern in patterns for path in directory.glob(pattern)))()


def run(*command) -> None:
    subprocess.run([str(part) for part in command], check=True, capture_output=True)


def cp(src: Path, dst: Path) -> None:
    run("cp", src, dst)
    run("sync", dst)


def qemu_img_convert(src: Path, src_fmt: str, dst: Path, fmt: str, subformat: str | None) -> None:
    """The reference: qemu-img convert as a user types it (its default flags; the output options ce uses, so the
    two write the same disk), then ``sync FILE`` because ce flushes its output."""
    options = create_options(fmt, disks.choose_subformat(fmt, subformat))
    run("qemu-img", "convert", "-f", src_fmt, "-O", fmt, *(("-o", options) if options else ()), src, dst)
    run("sync", dst)


def ce_convert(src: Path, src_fmt: str, dst: Path, fmt: str, subformat: str | None,
               method: str | None = None) -> None:
    disks.convert(src, dst, fmt, src_fmt=src_fmt, subformat=subformat, method=method)


def other_method(src: Path, fmt: str, subformat: str | None) -> str | None:
    """The local method ce does not choose for this pair, where it has two (a raw disk into a container it fills)."""
    source = disks.info(src, "raw")
    subformat = disks.choose_subformat(fmt, subformat)
    if not layouts.streamable(source, fmt, subformat):
        return None
    return "qemu-img" if conversion.fills(source, fmt, subformat) else "fill"


def convert_pairs(src: Path, work: Path, pairs: str) -> list[tuple[str, Path, str, str, str | None]]:
    """(label, source, its format, output format, subformat) of the pairs to time; the sources of the reverse
    pairs are made here by qemu-img, untimed."""
    chosen = [(label, src, "raw", fmt, subformat) for label, fmt, subformat, main in FORWARD
              if main or pairs == "all"]
    for label, fmt, main in BACKWARD:
        if main or pairs == "all":
            source = work / f"source.{fmt}"
            qemu_img_convert(src, "raw", source, fmt, None)
            warm(source)
            chosen.append((label, source, fmt, "raw", None))
    return chosen


def bench_convert(sources: dict[str, Path], work: Path, repeat: int, pairs: str, both_methods: bool,
                  rows: list) -> None:
    for data, src in sources.items():
        chosen = convert_pairs(src, work, pairs)
        warm(src)
        copy = work / "copy.raw"
        outputs = clear(work, copy.name, "ce-out.*", "qemu-out.*")
        contenders = {"cp": (functools.partial(cp, src, copy), outputs)}
        for label, source, source_fmt, fmt, subformat in chosen:
            ours, theirs = work / f"ce-out.{fmt}", work / f"qemu-out.{fmt}"
            contenders[label] = (functools.partial(ce_convert, source, source_fmt, ours, fmt, subformat), outputs)
            contenders["qemu " + label] = (functools.partial(qemu_img_convert, source, source_fmt, theirs, fmt,
                                                             subformat), outputs)
            other = both_methods and source_fmt == "raw" and other_method(source, fmt, subformat)
            if other:
                contenders[f"{label} {other}"] = (functools.partial(ce_convert, source, source_fmt, ours, fmt,
                                                                    subformat, other), outputs)
        times = interleaved(repeat, contenders)
        clear(work, copy.name, "ce-out.*", "qemu-out.*", "source.*")()
        for label, _, _, _, _ in chosen:
            rows.append(compared(f"convert {label}", data, times, label, "qemu-img convert", "qemu " + label,
                                 QEMU_TARGET))
            for other in [name for name in contenders if name.startswith(label + " ")]:
                rows.append(compared(f"  by {other[len(label) + 1:]}", data, times, other, "qemu-img convert",
                                     "qemu " + label, None, "info: the method ce does not choose for this pair"))
            if label.startswith("raw->"):
                target = DENSE_TARGET if data == "dense" else SPARSE_TARGET
                rows.append(compared(f"convert {label}", data, times, label, "cp", "cp", target))


def cli_startup(repeat: int) -> list[float]:
    """Seconds of ``ce convert --help``: the interpreter and the imports a convert needs, no disk work."""
    return interleaved(repeat, {"help": functools.partial(run, sys.executable, "-m", "ce.cli", "convert",
                                                          "--help")})["help"]


def bench_whole_process(sources: dict[str, Path], work: Path, repeat: int, rows: list) -> None:
    """``ce convert -O vhdx`` as a user runs it (start-up included) vs ``qemu-img convert -O vhdx`` + sync."""
    (data, src), = sources.items()
    warm(src)
    ours, theirs = work / "cli.vhdx", work / "qemu-cli.vhdx"
    times = interleaved(repeat, {
        "ce": (functools.partial(run, sys.executable, "-m", "ce.cli", "convert", src, ours, "-O", "vhdx"),
               remove(ours)),
        "qemu": (functools.partial(qemu_img_convert, src, "raw", theirs, "vhdx", None), remove(theirs))})
    remove(ours, theirs)()
    rows.append(compared("ce convert CLI ->vhdx", data, times, "ce", "qemu-img convert", "qemu", None,
                         "info: ce's whole process, start-up included"))


def bench_export(sources: dict[str, Path], work: Path, repeat: int, with_qcow2: bool, rows: list) -> None:
    scratch = os.environ.get("CE_SCRATCH")
    try:
        _bench_export(sources, work, repeat, with_qcow2, rows)
    finally:
        if scratch is None:
            os.environ.pop("CE_SCRATCH", None)
        else:
            os.environ["CE_SCRATCH"] = scratch


def _bench_export(sources: dict[str, Path], work: Path, repeat: int, with_qcow2: bool, rows: list) -> None:
    auth = work / "smb-auth"
    auth.write_text(f"username = {USER}\npassword = {PASSWORD}\n")
    auth.chmod(0o600)
    export = step_types()["export"]
    with SambaServer(work / "samba") as server:
        share = server.share_dir("share")
        location = {"Location": server.unc("share"), "port": server.port,
                    "credentials": {"username": USER, "password": PASSWORD}}
        os.environ["CE_SCRATCH"] = str(work)            # removed with the size's work folder: unset below
        with SmbShare(server.unc("share"), Credentials(USER, PASSWORD), port=server.port) as smb_share:
            print(f"SMB protection: ce {smb_share.protection}; reference smbclient -m SMB3 "
                  "--client-protection=sign (signs every message); info: smbclient default (signs only what the "
                  "server requires)", file=sys.stderr)
        for data, src in sources.items():
            warm(src)
            params = export.parse({"disk": str(src), "outputStorageLocation": location, "SmbDiskName": "bench"})
            local = work / "bench-local.vhdx"
            disks.convert(src, local, "vhdx", src_fmt="raw")
            warm(local)
            as_qcow2 = work / "bench-source.qcow2"
            if with_qcow2:
                disks.convert(src, as_qcow2, "qcow2", src_fmt="raw")
                warm(as_qcow2)
            from_qcow2 = export.parse({"disk": str(as_qcow2), "outputStorageLocation": location,
                                       "SmbDiskName": "bench-qcow2"})

            def upload() -> None:
                with SmbShare(server.unc("share"), Credentials(USER, PASSWORD), port=server.port) as smb_share:
                    smb_share.upload(local, "upload.vhdx", overwrite=True)

            def put(*protection: str):
                return functools.partial(run, "smbclient", "//127.0.0.1/share", "-p", server.port, "-A", auth,
                                         "-m", "SMB3", *protection, "-c", f"put {local} put.vhdx")
            on_share = clear(share, "*.vhdx")
            contenders = {"export": (lambda: execute(export, params, StepContext()), on_share),
                          "qcow2": (lambda: execute(export, from_qcow2, StepContext()), on_share),
                          "upload": (upload, on_share),
                          "signed": (put("--client-protection=sign"), on_share),
                          "default": (put(), on_share)}
            if not with_qcow2:
                del contenders["qcow2"]
            times = interleaved(repeat, contenders)
            remove(*share.glob("*.vhdx"), local, as_qcow2)()
            signed = "smbclient put signed"
            rows.append(compared("SMB export (vhdx)", data, times, "export", signed, "signed", DENSE_TARGET))
            rows.append(compared("SMB upload (vhdx)", data, times, "upload", signed, "signed", DENSE_TARGET))
            rows.append(compared("SMB export (vhdx)", data, times, "export", "smbclient put default", "default",
                                 None, INFO))
            if with_qcow2:
                rows.append(compared("SMB export from qcow2", data, times, "qcow2", signed, "signed", None,
                                     "info: the qcow2 is converted in scratch space first"))


def bench_hash(sources: dict[str, Path], repeat: int, rows: list) -> None:
    for data, src in sources.items():
        warm(src)
        for algorithms, tools in ((["md5"], ["md5sum"]), (["sha256"], ["sha256sum"]),
                                  (["md5", "sha256"], ["md5sum", "sha256sum"])):
            times = interleaved(repeat, {
                "ce": functools.partial(hashing.hash_disk, src, "raw", algorithms),
                "tools": lambda: [run(tool, src) for tool in tools]})
            rows.append(compared(f"hash {'+'.join(algorithms)}", data, times, "ce", " + ".join(tools), "tools",
                                 QEMU_TARGET))


def report(rows: list[Row], size_mb: int) -> str:
    lines = [f"== {size_mb} MiB", f"{'operation':<24} {'data':<10} {'ce s/GiB':>8}  {'reference':<22} "
             f"{'ref s/GiB':>9} {'ratio':>6} {'spread':>11} {'cpu':>5}  target"]
    missed = judged = 0
    for row in rows:
        low, high = row.spread
        line = (f"{row.operation:<24} {row.data:<10} {row.per_gib(row.ours):8.2f}  {row.reference_name:<22} "
                f"{row.per_gib(row.reference):9.2f} {row.ratio:6.2f} {low:5.2f}-{high:<5.2f} "
                f"{row.cpu_ratio or 0:5.2f}  ")
        if row.target is None:
            lines.append(line + row.note)
            continue
        ok = row.ratio >= row.target
        missed += not ok
        judged += 1
        lines.append(line + f"{'>=' if ok else 'MISSED <'} {row.target}")
    lines.append(f"{judged - missed} of {judged} ratios meet their target (ratio = reference time / ce time, "
                 "medians of interleaved runs; spread = lowest-highest ratio of one round; cpu = the same ratio of "
                 "CPU seconds, process and children)")
    return "\n".join(lines)


def side_by_side(rows: list[Row], sizes: list[int]) -> str:
    """One line per comparison: ce's seconds per GiB and the ratio at every size."""
    heads = "".join(f" {f'{size // 1024 or size} ' + ('GiB' if size >= 1024 else 'MiB'):>18}" for size in sizes)
    lines = ["== seconds per GiB (ce / reference) and ratio, per size",
             f"{'operation':<24} {'data':<10} {'reference':<22}{heads}"]
    keys = list(dict.fromkeys((row.operation, row.data, row.reference_name) for row in rows))
    for key in keys:
        cells = ""
        for size in sizes:
            found = [row for row in rows if (row.operation, row.data, row.reference_name) == key
                     and row.size_mb == size]
            cells += (f" {found[0].per_gib(found[0].ours):5.2f}/{found[0].per_gib(found[0].reference):5.2f} "
                      f"{found[0].ratio:5.2f}" if found else f" {'-':>18}")
        lines.append(f"{key[0]:<24} {key[1]:<10} {key[2]:<22}{cells}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", action="append", default=[],
                        help="MiB per source; a list (1024,4096,8192) or the flag repeated; default 1024")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=os.environ.get("CE_SCRATCH") or "/var/tmp")
    parser.add_argument("--data", choices=DATA_KINDS, action="append", help="default: both")
    parser.add_argument("--pairs", choices=("main", "all"), default="main")
    parser.add_argument("--both-methods", action="store_true",
                        help="also time the local method ce does not choose (fill or qemu-img) where it has two")
    parser.add_argument("--skip", action="append", default=[], choices=("startup", "convert", "export", "export-qcow2", "hash"))
    args = parser.parse_args(argv)
    compile_ce()
    args.size_mb = [int(size) for sizes in args.size_mb or ["1024"] for size in sizes.split(",")]
    for tool in ("cp", "md5sum", "sha256sum", "smbclient", "qemu-img"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (make setup installs it)", file=sys.stderr)
            return 1
    print(f"load average before: {load()}", file=sys.stderr)
    rows: list[Row] = []
    if "startup" not in args.skip:
        startup = cli_startup(args.repeat)
        print(f"CLI start-up (ce convert --help): {statistics.median(startup):.2f} s median of {args.repeat} "
              f"({min(startup):.2f}-{max(startup):.2f})")
    for size_mb in args.size_mb:
        found = bench_size(args, size_mb)
        print(report(found, size_mb), flush=True)
        rows += found
    if len(args.size_mb) > 1:
        print(side_by_side(rows, args.size_mb))
    print(f"load average after: {load()} on {os.cpu_count()} CPUs")
    return 0


def bench_size(args, size_mb: int) -> list[Row]:
    """Every comparison at one size, one data kind at a time (its source made, measured and removed)."""
    rows: list[Row] = []
    for kind in args.data or DATA_KINDS:
        work = Path(tempfile.mkdtemp(prefix="ce-bench-", dir=args.dir))
        try:
            print(f"making a {size_mb} MiB {kind} source in {work} ...", file=sys.stderr)
            sources = {kind: make_source(work, size_mb, kind)}
            if "convert" not in args.skip:
                bench_convert(sources, work, args.repeat, args.pairs, args.both_methods, rows)
            if "startup" not in args.skip and kind == (args.data or DATA_KINDS)[0]:
                bench_whole_process(sources, work, args.repeat, rows)
            if "export" not in args.skip:
                bench_export(sources, work, args.repeat, "export-qcow2" not in args.skip, rows)
            if "hash" not in args.skip:
                bench_hash(sources, args.repeat, rows)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        row.size_mb = size_mb
    return rows


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
