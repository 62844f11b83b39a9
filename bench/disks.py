"""ce's disk paths against the physical limit, side by side in one run on the same data.

    python -m bench.disks [--size-mb 1024] [--repeat 3] [--dir DIR] [--skip convert|export|hash]

Two source disks of ``--size-mb``: *dense* (random bytes) and *half-zero* (2 MiB random, 2 MiB of written zeros,
alternating; every byte allocated, as a used-then-cleaned disk is). For each, the contenders of a comparison run
interleaved (ce, reference, ce, reference, ...) ``--repeat`` times and the median counts:

* convert raw -> vhdx / vmdk / fixed vhd (``ce.disks.convert``) vs ``cp``, both followed by ``sync FILE`` (qemu-img
  convert writes its output with cache=unsafe and leaves it all dirty in the page cache, as cp does);
* SMB export (the whole export step: the raw disk streamed into a VHDX on the share) and the upload alone
  (``SmbShare.upload`` of a VHDX qemu-img made) vs Samba's ``smbclient put`` of that VHDX, against a throwaway smbd
  on 127.0.0.1; for information, the export of the same disk as qcow2, which is converted in scratch space first. Like for like: ce signs every message (SMB 3.1.1, AES-GMAC, its production setting), so the reference is
  ``smbclient --client-protection=sign``; smbclient's default, which signs only when the server requires it (this
  smbd does not), is printed for information;
* hash (``ce.hashing``) vs ``md5sum`` / ``sha256sum``.

The ratio is reference time / ce time: above 1 means ce is faster. Targets: >= 0.9 on dense data; on the half-zero
image conversions faster than cp (> 1). The machine is shared, so expect +-30 % between runs; the load average is
printed before and after.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ce import disks, hashing  # noqa: E402
from ce.smb import Credentials, SmbShare  # noqa: E402
from ce.step import StepContext, execute, step_types  # noqa: E402
from tests.support.smbserver import PASSWORD, USER, SambaServer  # noqa: E402

MiB = 1 << 20
DENSE_TARGET, SPARSE_TARGET = 0.9, 1.0
INFO = "info: not like for like"


def make_sources(directory: Path, size_mb: int) -> dict[str, Path]:
    dense, half = directory / "dense.raw", directory / "half-zero.raw"
    with open(dense, "wb") as d, open(half, "wb") as h:
        for i in range(size_mb):
            block = os.urandom(MiB)
            d.write(block)
            h.write(block if (i // 2) % 2 == 0 else bytes(MiB))
    subprocess.run(["sync"], check=True)
    return {"dense": dense, "half-zero": half}


def interleaved(repeat: int, contenders: dict) -> dict[str, float]:
    """Median seconds per contender; ``contenders`` maps a name to ``action`` or ``(action, before)``, and each
    round runs every contender once, in order, so a load spike on the shared machine hits all of them."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, contender in contenders.items():
            action, before = contender if isinstance(contender, tuple) else (contender, None)
            if before:
                before()
            started = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


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


def cp(src: Path, dst: Path) -> None:
    subprocess.run(["cp", str(src), str(dst)], check=True)
    subprocess.run(["sync", str(dst)], check=True)


def convert(src: Path, dst: Path, fmt: str, subformat: str | None) -> None:
    disks.convert(src, dst, fmt, src_fmt="raw", subformat=subformat)
    subprocess.run(["sync", str(dst)], check=True)


def bench_convert(sources: dict[str, Path], work: Path, repeat: int, rows: list) -> None:
    for data, src in sources.items():
        warm(src)
        copy = work / "copy.raw"
        contenders = {"cp": (lambda: cp(src, copy), remove(copy))}
        for label, fmt, subformat in (("raw->vhdx", "vhdx", None), ("raw->vmdk", "vmdk", None),
                                      ("raw->fixed vhd", "vhd", "fixed")):
            out = work / f"out.{fmt}"
            contenders[label] = (functools.partial(convert, src, out, fmt, subformat), remove(out))
        medians = interleaved(repeat, contenders)
        remove(copy, *work.glob("out.*"))()
        for label, seconds in medians.items():
            if label != "cp":
                rows.append((f"convert {label}", data, seconds, "cp", medians["cp"]))


def bench_export(sources: dict[str, Path], work: Path, repeat: int, rows: list) -> None:
    auth = work / "smb-auth"
    auth.write_text(f"username = {USER}\npassword = {PASSWORD}\n")
    auth.chmod(0o600)
    export = step_types()["export"]
    with SambaServer(work / "samba") as server:
        share = server.share_dir("share")
        location = {"Location": server.unc("share"), "port": server.port,
                    "credentials": {"username": USER, "password": PASSWORD}}
        os.environ["CE_SCRATCH"] = str(work)
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
            disks.convert(src, as_qcow2, "qcow2", src_fmt="raw")
            warm(as_qcow2)
            from_qcow2 = export.parse({"disk": str(as_qcow2), "outputStorageLocation": location,
                                       "SmbDiskName": "bench-qcow2"})

            def upload() -> None:
                with SmbShare(server.unc("share"), Credentials(USER, PASSWORD), port=server.port) as smb_share:
                    smb_share.upload(local, "upload.vhdx", overwrite=True)

            def put(*protection: str):
                return functools.partial(subprocess.run, ["smbclient", "//127.0.0.1/share", "-p", str(server.port),
                                                          "-A", str(auth), "-m", "SMB3", *protection,
                                                          "-c", f"put {local} put.vhdx"],
                                         check=True, capture_output=True)
            medians = interleaved(repeat, {
                "export": (lambda: execute(export, params, StepContext()), remove(share / "bench.vhdx")),
                "qcow2": (lambda: execute(export, from_qcow2, StepContext()), remove(share / "bench-qcow2.vhdx")),
                "upload": (upload, remove(share / "upload.vhdx")),
                "signed": (put("--client-protection=sign"), remove(share / "put.vhdx")),
                "default": (put(), remove(share / "put.vhdx")),
            })
            remove(*share.glob("*.vhdx"), local, as_qcow2)()
            rows.append(("SMB export (vhdx)", data, medians["export"], "smbclient put signed", medians["signed"]))
            rows.append(("SMB upload (vhdx)", data, medians["upload"], "smbclient put signed", medians["signed"]))
            rows.append(("SMB export (vhdx)", data, medians["export"], "smbclient put default", medians["default"],
                         INFO))
            rows.append(("SMB export from qcow2", data, medians["qcow2"], "smbclient put signed", medians["signed"],
                         "info: the qcow2 is converted in scratch space first"))


def bench_hash(sources: dict[str, Path], repeat: int, rows: list) -> None:
    for data, src in sources.items():
        warm(src)
        for algorithms, tools in ((["md5"], ["md5sum"]), (["sha256"], ["sha256sum"]),
                                  (["md5", "sha256"], ["md5sum", "sha256sum"])):
            medians = interleaved(repeat, {
                "ce": functools.partial(hashing.hash_disk, src, "raw", algorithms),
                "tools": lambda: [subprocess.run([tool, str(src)], check=True, capture_output=True)
                                  for tool in tools]})
            rows.append((f"hash {'+'.join(algorithms)}", data, medians["ce"], " + ".join(tools), medians["tools"]))


def report(rows: list, size_mb: int) -> str:
    lines = [f"{'operation':<22} {'data':<10} {'ce s':>7} {'MB/s':>7}  {'reference':<22} {'ref s':>7} "
             f"{'ratio':>6}  target"]
    missed = judged = 0
    for operation, data, ours, reference_name, reference, *info in rows:
        ratio = reference / ours
        line = (f"{operation:<22} {data:<10} {ours:7.2f} {size_mb * MiB / 1e6 / ours:7.0f}  "
                f"{reference_name:<22} {reference:7.2f} {ratio:6.2f}  ")
        if info:
            lines.append(line + info[0])
            continue
        target = DENSE_TARGET if data == "dense" else (SPARSE_TARGET if operation.startswith("convert")
                                                         else DENSE_TARGET)
        ok = ratio >= target
        missed += not ok
        judged += 1
        lines.append(line + f"{'>=' if ok else 'MISSED <'} {target}")
    lines.append(f"{judged - missed} of {judged} ratios meet their target (ratio = reference time / ce time, "
                 "medians of interleaved runs)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=os.environ.get("CE_SCRATCH") or "/var/tmp")
    parser.add_argument("--skip", action="append", default=[], choices=("convert", "export", "hash"))
    args = parser.parse_args(argv)
    for tool in ("cp", "md5sum", "sha256sum", "smbclient", "qemu-img"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (make setup installs it)", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="ce-bench-", dir=args.dir))
    rows: list = []
    print(f"load average before: {load()}", file=sys.stderr)
    try:
        print(f"making two {args.size_mb} MiB sources in {work} ...", file=sys.stderr)
        sources = make_sources(work, args.size_mb)
        if "convert" not in args.skip:
            bench_convert(sources, work, args.repeat, rows)
        if "export" not in args.skip:
            bench_export(sources, work, args.repeat, rows)
        if "hash" not in args.skip:
            bench_hash(sources, args.repeat, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(rows, args.size_mb))
    print(f"load average after: {load()} on {os.cpu_count()} CPUs")
    return 0


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
