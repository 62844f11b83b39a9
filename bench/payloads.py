"""What checking the payload store before the launch costs, and what hashing every candidate there would add.

    python bench/payloads.py [--vda-mb 700] [--pvs-mb 60] [--repeat 3] [--launch]

One store of stand-in files at real sizes: a VDA server and a workstation installer (``--vda-mb`` each), a PVS
target device installer (``--pvs-mb``) and a few driver files. Two prepares are validated (``StepType.parse``, what
the CLI, job files and the server run before any work): installMisa + installMcsio + targetPlatform azure, and
installPvs + targetPlatform azure; with the page cache warm and cold (each file dropped from it with posix_fadvise
DONTNEED; a host's own cache may still hold it), beside hashing every candidate instead of stat'ing it.
``--launch`` also times ``ce plan --job`` refused before the launch and the same command on a blank disk, which
starts the appliance (and is refused after it: no Windows). Medians of ``--repeat`` runs, seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ce.payloads import PayloadStore, write_manifest  # noqa: E402
from ce.registry import sha256_file  # noqa: E402
from ce.step import step_types  # noqa: E402

MiB = 1 << 20
JOB = {"provisioningType": "Mcs", "installMisa": True, "installMcsio": True, "targetPlatform": "azure"}
PVS_JOB = {"provisioningType": "Pvs", "installPvs": "2402.0.2000", "targetPlatform": "azure"}


def make_store(root: Path, vda_mb: int, pvs_mb: int) -> Path:
    root.mkdir()
    files = {("vda-server-installer", "2203.0.6000.9", "VDAServerSetup.exe"): vda_mb * MiB,
             ("vda-workstation-installer", "2203.0.6000.9", "VDAWorkstationSetup.exe"): vda_mb * MiB,
             ("pvs-target-device", "2402.0.2000", "PVS_Device_x64.exe"): pvs_mb * MiB,
             ("driver/storflt", "1.0", "storflt.sys"): 200 << 10, ("driver/storflt", "1.0", "storflt.inf"): 4 << 10}
    for (_, _, name), size in files.items():
        with open(root / name, "wb") as f:
            for _ in range(size // MiB):
                f.write(os.urandom(MiB))
            f.write(os.urandom(size % MiB))
    write_manifest(root, [{"component": c, "version": v, "file": n} for c, v, n in files])
    return root


def drop_cache(store: Path) -> None:
    for path in store.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def hash_every_candidate(store: Path) -> None:
    """The alternative: every payload the job could use read and hashed before the launch."""
    opened = PayloadStore(store)
    for payload in opened.payloads:
        opened.verified(payload)


def timed(action, store: Path, cold: bool, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        if cold:
            drop_cache(store)
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cli_seconds(job: Path, disk: Path, repeat: int) -> tuple[float, str]:
    times, last = [], ""
    for _ in range(repeat):
        started = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "ce"), "plan", "--job", str(job), str(disk)], cwd=ROOT,
                              capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                    if k != "CE_PAYLOADS"})
        times.append(time.perf_counter() - started)
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    return statistics.median(times), last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vda-mb", type=int, default=700)
    parser.add_argument("--pvs-mb", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--launch", action="store_true")
    args = parser.parse_args()
    prepare = step_types()["prepare"]
    with tempfile.TemporaryDirectory(prefix="ce-bench-payloads-") as work:
        store = make_store(Path(work) / "store", args.vda_mb, args.pvs_mb)
        total = sum(p.stat().st_size for p in store.iterdir()) / MiB
        print(f"store: {total:.0f} MiB (2 x {args.vda_mb} MiB VDA, {args.pvs_mb} MiB PVS, drivers); "
              f"load average {os.getloadavg()[0]:.1f}")
        mcs = lambda: prepare.parse({"disk": "/x", **JOB, "payloads": str(store)})
        pvs = lambda: prepare.parse({"disk": "/x", **PVS_JOB, "payloads": str(store)})
        rows = (("validate MISA+MCSIO+azure (stat only)", mcs), ("validate installPvs+azure (PVS hashed)", pvs),
                ("hash every candidate", lambda: hash_every_candidate(store)),
                (f"sha256 of one {args.pvs_mb} MiB PVS installer", lambda: sha256_file(store / "PVS_Device_x64.exe")))
        for name, action in rows:
            warm = timed(action, store, cold=False, repeat=args.repeat)
            cold = timed(action, store, cold=True, repeat=args.repeat)
            print(f"{name:<44} warm {warm:8.3f} s   cold {cold:8.3f} s")
        if args.launch:
            launch_rows(Path(work), args.repeat)


def launch_rows(work: Path, repeat: int) -> None:
    disk = work / "blank.raw"
    disk.write_bytes(b"\0" * MiB)
    for name, payloads in (("ce plan refused before the launch", "missing"),
                           ("ce plan that starts the appliance", "store")):
        job = work / f"{payloads}.json"
        job.write_text(json.dumps({"type": "prepare", "params": {**JOB, "payloads": payloads}}))
        seconds, last = cli_seconds(job, disk, 1 if payloads == "store" else repeat)
        print(f"{name:<44} {seconds:8.2f} s   ({last[:90]})")


if __name__ == "__main__":
    main()
