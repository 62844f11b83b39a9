"""What reading the boot configuration adds to an inspect: per sample, the seconds of inspect's boot phase (find
the ESP / active partition, mount it, copy the BCD out, read and resolve its entries) against the whole inspect.

    python bench/inspect_boot.py [--rounds 3] [SAMPLE ...]

All samples are attached to ONE read-only appliance (its start-up is not counted); each sample is inspected
``--rounds`` times, interleaved, and the medians and spread are printed. The appliance shares the machine's CPUs
with whatever else runs, so the load average is printed with the figures.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ce import disks  # noqa: E402
from ce.guest import Drive, Guest  # noqa: E402
from ce.windows.detection import inspect_guest  # noqa: E402
from images.spec import load_all  # noqa: E402

DEFAULT = ["win2022-vda2411-mcs", "win2019-vda2203-pvs-bios", "win10-vda2402-pvs-bios", "win2016-vda1912"]
BOOT_PHASE = "reading the boot configuration"


def timed_inspect(guest: Guest, info, device: str) -> tuple[float, float]:
    """(whole inspect, boot phase) in seconds."""
    marks = {}
    started = time.monotonic()
    report = inspect_guest(guest, info, device=device,
                           progress=lambda percent, message: marks.setdefault(message, time.monotonic()))
    ended = time.monotonic()
    assert report.boot and report.boot.entries, f"{device}: no boot entries read"
    return ended - started, ended - marks[BOOT_PHASE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("samples", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    specs = load_all()
    infos = {name: disks.info(str(specs[name].path)) for name in args.samples}
    with Guest([Drive(i.path, i.format, readonly=True) for i in infos.values()]) as guest:
        devices = dict(zip(infos, guest.devices()))
        times = {name: [] for name in infos}
        for _ in range(args.rounds):
            for name, info in infos.items():
                times[name].append(timed_inspect(guest, info, devices[name]))
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, {args.rounds} rounds, accel {guest.accel}")
    print(f"{'sample':<28} {'inspect s':>10} {'boot s':>8} {'boot range':>14} {'share':>6}")
    for name, rows in times.items():
        whole, boot = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        spread = f"{min(r[1] for r in rows):.2f}-{max(r[1] for r in rows):.2f}"
        print(f"{name:<28} {whole:>10.2f} {boot:>8.2f} {spread:>14} {boot / whole:>6.0%}")


if __name__ == "__main__":
    main()
