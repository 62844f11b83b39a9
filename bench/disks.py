"""ce's disk paths against the physical limit, side by side in one run on the same data.

    python -m bench.disks [--size-mb 1024] [--repeat 2] [--dir DIR]

Two source disks of ``--size-mb``: *dense* (random bytes) and *half-zero* (2 MiB random, 2 MiB of written zeros,
alternating; every byte allocated, as a used-then-cleaned disk is). For each, best of ``--repeat`` runs:

* convert raw -> vhdx / vmdk / fixed vhd (``ce.disks.convert``) vs ``cp`` (both end with the output flushed:
  qemu-img flushes on close, cp is followed by ``sync FILE``);
* SMB export (the whole export step: convert to VHDX in scratch space, upload) vs Samba's ``smbclient put`` of the
  VHDX the export produced (the same bytes), against a throwaway smbd on 127.0.0.1;
* hash (``ce.hashing``) vs ``md5sum`` / ``sha256sum``.

The ratio is reference time / ce time: above 1 means ce is faster. Targets: >= 0.9 on dense data; on the half-zero
image conversions faster than cp (> 1). The machine is shared, so expect +-30 % between runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ce import disks, hashing  # noqa: E402
from ce.step import StepContext, load_all  # noqa: E402
from tests.smbserver import PASSWORD, USER, SambaServer  # noqa: E402

MiB = 1 << 20
DENSE_TARGET, SPARSE_TARGET = 0.9, 1.0


def make_sources(directory: Path, size_mb: int) -> dict[str, Path]:
    dense, half = directory / "dense.raw", directory / "half-zero.raw"
    with open(dense, "wb") as d, open(half, "wb") as h:
        for i in range(size_mb):
            block = os.urandom(MiB)
            d.write(block)
            h.write(block if (i // 2) % 2 == 0 else bytes(MiB))
    subprocess.run(["sync"], check=True)
    return {"dense": dense, "half-zero": half}


def best(repeat: int, action, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before:
            before()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


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


def bench_convert(sources: dict[str, Path], work: Path, repeat: int, rows: list) -> None:
    for data, src in sources.items():
        warm(src)
        copy = work / "copy.raw"
        reference = best(repeat, lambda: cp(src, copy), remove(copy))
        remove(copy)()
        for label, fmt, subformat in (("raw->vhdx", "vhdx", None), ("raw->vmdk", "vmdk", None),
                                      ("raw->fixed vhd", "vhd", "fixed")):
            out = work / f"out.{fmt}"
            ours = best(repeat, lambda: disks.convert(src, out, fmt, src_fmt="raw", subformat=subformat),
                        remove(out))
            remove(out)()
            rows.append((f"convert {label}", data, ours, "cp", reference))


def bench_export(sources: dict[str, Path], work: Path, repeat: int, rows: list) -> None:
    auth = work / "smb-auth"
    auth.write_text(f"username = {USER}\npassword = {PASSWORD}\n")
    auth.chmod(0o600)
    export = load_all()["export"]
    with SambaServer(work / "samba") as server:
        share = server.share_dir("share")
        location = {"Location": server.unc("share"), "port": server.port,
                    "credentials": {"username": USER, "password": PASSWORD}}
        os.environ["CE_SCRATCH"] = str(work)
        for data, src in sources.items():
            warm(src)
            params = export.parse({"disk": str(src), "outputStorageLocation": location, "SmbDiskName": "bench"})
            ours = best(repeat, lambda: export.run(params, StepContext()), remove(share / "bench.vhdx"))
            local = work / "bench.vhdx"
            disks.convert(src, local, "vhdx", src_fmt="raw")
            warm(local)

            def put() -> None:
                subprocess.run(["smbclient", "//127.0.0.1/share", "-p", str(server.port), "-A", str(auth),
                                "-m", "SMB3", "-c", f"put {local} put.vhdx"], check=True, capture_output=True)
            reference = best(repeat, put, remove(share / "put.vhdx"))
            remove(share / "put.vhdx", share / "bench.vhdx", local)()
            rows.append(("SMB export (vhdx)", data, ours, "smbclient put", reference))


def bench_hash(sources: dict[str, Path], repeat: int, rows: list) -> None:
    for data, src in sources.items():
        warm(src)
        for algorithms, tools in ((["md5"], ["md5sum"]), (["sha256"], ["sha256sum"]),
                                  (["md5", "sha256"], ["md5sum", "sha256sum"])):
            ours = best(repeat, lambda: hashing.hash_disk(src, "raw", algorithms))
            reference = best(repeat, lambda: [subprocess.run([tool, str(src)], check=True, capture_output=True)
                                              for tool in tools])
            rows.append((f"hash {'+'.join(algorithms)}", data, ours, " + ".join(tools), reference))


def report(rows: list, size_mb: int) -> str:
    lines = [f"{'operation':<22} {'data':<10} {'ce s':>7} {'MB/s':>7}  {'reference':<20} {'ref s':>7} "
             f"{'ratio':>6}  target"]
    missed = 0
    for operation, data, ours, reference_name, reference in rows:
        ratio = reference / ours
        target = DENSE_TARGET if data == "dense" else (SPARSE_TARGET if operation.startswith("convert")
                                                         else DENSE_TARGET)
        ok = ratio >= target
        missed += not ok
        lines.append(f"{operation:<22} {data:<10} {ours:7.2f} {size_mb * MiB / 1e6 / ours:7.0f}  "
                     f"{reference_name:<20} {reference:7.2f} {ratio:6.2f}  {'>=' if ok else 'MISSED <'} {target}")
    lines.append(f"{len(rows) - missed} of {len(rows)} ratios meet their target (ratio = reference time / ce time)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", default=os.environ.get("CE_SCRATCH") or "/var/tmp")
    parser.add_argument("--skip", action="append", default=[], choices=("convert", "export", "hash"))
    args = parser.parse_args(argv)
    for tool in ("cp", "md5sum", "sha256sum", "smbclient", "qemu-img"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (make setup installs it)", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="ce-bench-", dir=args.dir))
    rows: list = []
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
