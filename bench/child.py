"""Writing a PVS vDisk's edits as a differencing child beside it on the share, against ``smbclient put`` of a file
holding exactly the changed bytes.

    python bench/child.py [--size-mb 1024] [--changed 0.25] [--repeat 5] [--dir DIR]

A throwaway smbd on 127.0.0.1 holds the parent: ``--size-mb`` of random bytes made a dynamic VHDX by
``qemu-img convert``. ``ce.sharechild.opened_parent`` serves it read-only over NBD and a local qcow2 overlay of it is
edited by qemu-io as a guest would (about ``--changed`` of the disk, scattered over its 2 MiB blocks: whole blocks
of data, parts of blocks, blocks written with zeros), as convertToUefi and upgradePvs do before they write the
child. Then, interleaved (ce, put, ce, put, ...) ``--repeat`` times:

* ce: ``ShareParent.write_child`` (the overlay's changed extents read through qemu-nbd into a VHDX child in scratch
  space, fsynced) and ``ShareParent.upload_child`` (sent as NAME.partial, read back on the share and hashed, renamed)
  -- what those steps do once the guest is done;
* smbclient put, ``--client-protection=sign`` as in bench/disks.py (ce signs every message), of a local file of
  random bytes as long as the changed extents together: the least any tool must send;
* for information, smbclient put of the child ce wrote (its blocks are whole 2 MiB: a partly changed block is sent
  whole), and ce's ``SmbShare.upload`` of it without the read-back: they separate the child's size, the sending
  and upload_child's check (the child read back on the share and hashed) from one another.

The median counts and the spread (min..max) is printed, as the machine is shared; MB/s are changed bytes per
second for both; ce's two phases are printed apart. Ratio = smbclient's time / ce's (above 1: ce is faster).
"""
from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ce.sharechild import changed_extents, opened_parent  # noqa: E402
from ce.smb.target import StorageLocation  # noqa: E402
from tests.support.smbserver import PASSWORD, USER, SambaServer  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
BLOCK = 2 * MiB                                      # a VHDX child's block
PARENT, CHILD = "base.vhdx", "base-1.avhdx"
# per block picked: mostly whole blocks of data, some parts of blocks, some zeros (the first three give one of each)
KINDS = ("whole", "partial", "zeros") + ("whole",) * 9 + ("partial",) * 5 + ("zeros",) * 2


def make_parent(raw: Path, vhdx: Path, size_mb: int) -> None:
    with open(raw, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(MiB))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vhdx", str(raw), str(vhdx)], check=True)
    raw.unlink()


def block_edits(rng: random.Random, kind: str, start: int) -> list[str]:
    if kind == "whole":
        return [f"write -P {rng.randrange(1, 256)} {start} {BLOCK}"]
    if kind == "zeros":
        return [f"write -z {start} {BLOCK}"]
    edits = []
    for _ in range(rng.randrange(1, 5)):             # 1 to 4 runs of 4 KiB .. 256 KiB, 4 KiB aligned
        length = rng.randrange(1, 65) * 4 * KiB
        offset = rng.randrange(0, (BLOCK - length) // (4 * KiB) + 1) * 4 * KiB
        edits.append(f"write -P {rng.randrange(1, 256)} {start + offset} {length}")
    return edits


def guest_edits(size: int, changed: float, seed: int = 1) -> list[str]:
    """qemu-io commands touching about ``changed`` of the disk's blocks' worth of bytes, scattered."""
    rng = random.Random(seed)
    blocks = size // BLOCK
    picked = rng.sample(range(blocks), max(1, min(blocks, round(blocks * changed / 0.8))))  # ~80 % of a pick changes
    return [edit for i, block in enumerate(picked) for edit in block_edits(rng, KINDS[i % len(KINDS)], block * BLOCK)]


def edit(overlay: Path, commands: list[str]) -> None:
    args = [arg for command in commands for arg in ("-c", command)]
    subprocess.run(["qemu-io", "-f", "qcow2", *args, str(overlay)], check=True, capture_output=True)


def rounds(repeat: int, contenders: dict) -> dict[str, list[float]]:
    """Seconds of every run per contender: each round runs each contender once, in order, after its ``before``."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, (action, before) in contenders.items():
            before()
            started = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - started)
    return times


def remove(*paths: Path):
    def clean() -> None:
        for path in paths:
            path.unlink(missing_ok=True)
    return clean


def cell(values: list[float], size: int) -> str:
    median = statistics.median(values)
    return f"{median:6.2f} s {size / median / 1e6:6.0f} MB/s ({min(values):.2f}..{max(values):.2f})"


def run(args, work: Path) -> None:
    samba = SambaServer(work / "samba")
    share = samba.share_dir("share")
    auth, scratch = work / "smb-auth", work / "scratch"
    scratch.mkdir()
    os.environ["CE_SCRATCH"] = str(scratch)
    with samba:
        make_parent(scratch / "parent.raw", share / PARENT, args.size_mb)
        auth.write_text(f"username = {USER}\npassword = {PASSWORD}\n")
        auth.chmod(0o600)
        with opened_parent(StorageLocation.model_validate(samba.location()), PARENT, scratch) as parent:
            overlay = parent.overlay(scratch / "edits.qcow2", parent.facts.virtual_size)
            edit(overlay, guest_edits(parent.facts.virtual_size, args.changed))
            changed = sum(length for _, length in changed_extents(overlay))
            put_file = scratch / "changed.bin"
            with open(put_file, "wb") as f:
                f.write(os.urandom(changed))
            written, phases = [], {"write_child": [], "upload_child": []}

            def ce() -> None:
                started = time.perf_counter()
                child = parent.write_child(overlay, scratch / "child.avhdx", CHILD)
                uploading = time.perf_counter()
                parent.upload_child(child, CHILD, overwrite=True)
                phases["write_child"].append(uploading - started)
                phases["upload_child"].append(time.perf_counter() - uploading)
                written.append(child.summary)

            def put(local: Path, name: str):
                command = ["smbclient", "//127.0.0.1/share", "-p", str(samba.port), "-A", str(auth), "-m", "SMB3",
                           "--client-protection=sign", "-c", f"put {local} {name}"]
                return functools.partial(subprocess.run, command, check=True, capture_output=True), remove(share / name)

            print(f"child: a {args.size_mb} MiB random dynamic VHDX parent on smbd at 127.0.0.1, a qcow2 overlay "
                  f"edited by qemu-io: {changed / MiB:.1f} MiB changed in {len(changed_extents(overlay))} extents; "
                  f"ce {parent.share.protection}, smbclient -m SMB3 --client-protection=sign; medians of "
                  f"{args.repeat} interleaved rounds (min..max); load average {load()}", flush=True)
            times = rounds(args.repeat, {
                "ce": (ce, remove(scratch / "child.avhdx", share / CHILD)),
                "put": put(put_file, "put.bin"), "put child": put(scratch / "child.avhdx", "put.avhdx"),
                "upload child": (lambda: parent.share.upload(scratch / "child.avhdx", "upload.avhdx", overwrite=True),
                                 remove(share / "upload.avhdx"))})
            assert parent.unchanged(), "the parent changed on the share"
    summary = written[-1]
    print(f"{'':<36} {'median':>8} {'changed MB/s':>12} (min..max)")
    print(f"{'ce write_child + upload_child':<36} {cell(times['ce'], changed)}")
    for name, values in phases.items():
        print(f"{'  of which ' + name:<36} {cell(values, changed)}")
    print(f"{'smbclient put (signed)':<36} {cell(times['put'], changed)}")
    print(f"{'info: smbclient put of the child':<36} {cell(times['put child'], changed)}")
    print(f"{'info: SmbShare.upload, no read-back':<36} {cell(times['upload child'], changed)}")
    print(f"child: {summary.file_size} bytes ({summary.file_size / MiB:.1f} MiB), data {summary.data_bytes} bytes "
          f"({summary.data_bytes / MiB:.1f} MiB), blocks {summary.blocks}; changed extents {changed} bytes")
    print(f"ratio put/ce: {statistics.median(times['put']) / statistics.median(times['ce']):.2f}")


def default_dir(size_mb: int) -> str:
    """Memory when it holds the parent, the overlay, the child and the share's copies."""
    shm = os.statvfs("/dev/shm")
    return "/dev/shm" if shm.f_bavail * shm.f_frsize > 4 * size_mb * MiB else "/var/tmp"


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="the parent's size (a multiple of 2 MiB)")
    parser.add_argument("--changed", type=float, default=0.25, help="about this share of the disk is edited")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", help="where the share and scratch live (default: /dev/shm when it has room)")
    args = parser.parse_args(argv)
    for tool in ("smbclient", "qemu-img", "qemu-io", "qemu-nbd"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (make setup installs it)", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="ce-child-", dir=args.dir or default_dir(args.size_mb)) as tmp:
        run(args, Path(tmp))
    print(f"load average after: {load()} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
