"""ce's SMB export and upload over a link with a WAN's round trip, against ``smbclient put`` over the same link.

    python bench/wan.py [--size-mb 1024] [--repeat 3] [--delays 0,10,30] [--dir DIR]
                        [--windows 32x8,64x8,...]

A throwaway smbd on 127.0.0.1 sits behind ``bench/wanproxy.py`` (a separate process), which delays every byte by
the one-way delay in each direction: 0, 10 and 30 ms, a round trip of 0, 20 and 60 ms added to loopback's. The
source is a disk of ``--size-mb`` random bytes. At each delay three contenders run interleaved (export, upload,
put, export, ...) ``--repeat`` times, and the median counts; the spread (min..max) is printed, as the machine is
shared:

* ce export: the whole export step -- the raw disk streamed into a VHDX on the share, qemu-img's check of the file
  over the share, the rename (connections, plan and verification included);
* ce upload: ``SmbShare.upload`` of a VHDX of that disk made locally beforehand (the byte path alone);
* smbclient put of the same VHDX, ``--client-protection=sign`` as in bench/disks.py: ce signs every message.

Ratio = smbclient's time / ce's (above 1: ce is faster). Target: >= 1.5 at 30 ms.

``--windows`` tunes instead: the upload alone with each WINDOW_MIBxWRITE_MIB (MiB on the wire x MiB per WRITE;
ce.smb's constants patched for the run) against smbclient put, at each delay.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.wanproxy import ProxyProcess  # noqa: E402
from ce import disks  # noqa: E402
from ce.smb import Credentials, SmbShare, pipeline, session  # noqa: E402
from ce.step import StepContext, execute, step_types  # noqa: E402
from tests.support.smbserver import PASSWORD, USER, SambaServer  # noqa: E402

MiB = 1 << 20
TARGET, TARGET_DELAY = 1.5, 30


def make_disk(path: Path, size_mb: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(MiB))
        os.fsync(f.fileno())


def default_dir(size_mb: int) -> str:
    """Memory when it holds the disk, its VHDX and the share's copies: a disk file system adds its own noise."""
    shm = os.statvfs("/dev/shm")
    return "/dev/shm" if shm.f_bavail * shm.f_frsize > 5 * size_mb * MiB else "/var/tmp"


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


class Window:
    """ce.smb's window for the duration of a ``with``: bytes on the wire and bytes per WRITE."""

    def __init__(self, window_mib: int, write_mib: int):
        self.window, self.write = window_mib * MiB, write_mib * MiB
        self._saved = None

    @classmethod
    def parse(cls, text: str) -> "Window":
        window_mib, _, write_mib = text.partition("x")
        return cls(int(window_mib), int(write_mib))

    def __str__(self) -> str:
        return f"{self.window // MiB} MiB / {self.write // MiB}"

    def __enter__(self) -> "Window":
        self._saved = pipeline.WINDOW, pipeline.WRITE_CHUNK
        pipeline.WINDOW = session.WINDOW = self.window
        pipeline.WRITE_CHUNK = session.WRITE_CHUNK = self.write
        return self

    def __exit__(self, *exc) -> None:
        pipeline.WINDOW = session.WINDOW = self._saved[0]
        pipeline.WRITE_CHUNK = session.WRITE_CHUNK = self._saved[1]


class Bench:
    """The smbd, the disk and its VHDX, and the contenders aimed at a proxy port."""

    def __init__(self, work: Path, size_mb: int):
        self.work, self.size_mb = work, size_mb
        self.disk, self.vhdx = work / "disk.raw", work / "disk.vhdx"
        self.auth = work / "smb-auth"
        self.samba = SambaServer(work / "samba")
        self.share = self.samba.share_dir("share")

    def __enter__(self) -> "Bench":
        make_disk(self.disk, self.size_mb)
        disks.convert(self.disk, self.vhdx, "vhdx", src_fmt="raw")
        self.auth.write_text(f"username = {USER}\npassword = {PASSWORD}\n")
        self.auth.chmod(0o600)
        os.environ["CE_SCRATCH"] = str(self.work)
        self.samba.start()
        return self

    def __exit__(self, *exc) -> None:
        self.samba.stop()

    def export(self, port: int):
        kind = step_types()["export"]
        params = kind.parse({"disk": str(self.disk), "SmbDiskName": "export",
                             "outputStorageLocation": {"Location": self.samba.unc("share"), "port": port,
                                                       "credentials": {"username": USER, "password": PASSWORD}}})
        return functools.partial(execute, kind, params, StepContext()), remove(self.share / "export.vhdx")

    def upload(self, port: int, window: Window | None = None):
        def run() -> None:
            with window or contextlib.nullcontext(), \
                    SmbShare(self.samba.unc("share"), Credentials(USER, PASSWORD), port=port) as share:
                share.upload(self.vhdx, "upload.vhdx", overwrite=True)
        return run, remove(self.share / "upload.vhdx")

    def put(self, port: int):
        command = ["smbclient", "//127.0.0.1/share", "-p", str(port), "-A", str(self.auth), "-m", "SMB3",
                   "--client-protection=sign", "-c", f"put {self.vhdx} put.vhdx"]
        return (functools.partial(subprocess.run, command, check=True, capture_output=True),
                remove(self.share / "put.vhdx"))

    def protection(self, port: int) -> str:
        with SmbShare(self.samba.unc("share"), Credentials(USER, PASSWORD), port=port) as share:
            return share.protection


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def cell(values: list[float], size: int) -> str:
    median, low, high = summary(values)
    return f"{median:6.2f} s {size / median / 1e6:5.0f} MB/s ({low:.2f}..{high:.2f})"


def compare(bench: Bench, delays: list[float], repeat: int) -> list[str]:
    size = bench.size_mb * MiB
    lines = [f"{'one-way':>8} {'ce export':<32} {'ce upload':<32} {'smbclient put (signed)':<32} "
             f"{'put/export':>10} {'put/upload':>10}"]
    for delay in delays:
        with ProxyProcess(bench.samba.port, delay) as proxy:
            times = rounds(repeat, {"export": bench.export(proxy.port), "upload": bench.upload(proxy.port),
                                    "put": bench.put(proxy.port)})
        put = statistics.median(times["put"])
        ratios = {name: put / statistics.median(times[name]) for name in ("export", "upload")}
        line = (f"{delay:>5g} ms {cell(times['export'], size):<32} {cell(times['upload'], size):<32} "
                f"{cell(times['put'], size):<32} {ratios['export']:>10.2f} {ratios['upload']:>10.2f}")
        if delay == TARGET_DELAY:
            line += "  target >= {}: {}".format(TARGET, "met" if min(ratios.values()) >= TARGET else "MISSED")
        lines.append(line)
        print(line, flush=True)
    return lines


def tune(bench: Bench, delays: list[float], repeat: int, windows: list[Window]) -> list[str]:
    size = bench.size_mb * MiB
    lines = [f"{'one-way':>8} {'window':<14} {'ce upload':<32} {'smbclient put (signed)':<32} {'put/upload':>10}"]
    for delay in delays:
        with ProxyProcess(bench.samba.port, delay) as proxy:
            contenders = {str(w): bench.upload(proxy.port, w) for w in windows}
            times = rounds(repeat, {**contenders, "put": bench.put(proxy.port)})
        put = statistics.median(times["put"])
        for window in windows:
            ours = times[str(window)]
            line = (f"{delay:>5g} ms {str(window):<14} {cell(ours, size):<32} {cell(times['put'], size):<32} "
                    f"{put / statistics.median(ours):>10.2f}")
            lines.append(line)
            print(line, flush=True)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delays", default="0,10,30", help="one-way delays in ms, comma-separated")
    parser.add_argument("--dir", help="where the disk and the share live (default: /dev/shm when it has room)")
    parser.add_argument("--windows", help="tune: WINDOW_MIBxWRITE_MIB,... (upload alone vs smbclient put)")
    args = parser.parse_args(argv)
    for tool in ("smbclient", "qemu-img"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (make setup installs it)", file=sys.stderr)
            return 1
    delays = [float(d) for d in args.delays.split(",")]
    with tempfile.TemporaryDirectory(prefix="ce-wan-", dir=args.dir or default_dir(args.size_mb)) as tmp, \
            Bench(Path(tmp), args.size_mb) as bench:
        print(f"WAN: a {args.size_mb} MiB random disk to smbd on 127.0.0.1 through bench/wanproxy.py (delay each "
              f"way); ce {bench.protection(bench.samba.port)}, window {pipeline.WINDOW // MiB} MiB on the wire "
              f"in {pipeline.WRITE_CHUNK // MiB} MiB writes; smbclient -m SMB3 --client-protection=sign; medians of "
              f"{args.repeat} interleaved rounds (min..max); load average {load()}", flush=True)
        if args.windows:
            tune(bench, delays, args.repeat, [Window.parse(w) for w in args.windows.split(",")])
        else:
            compare(bench, delays, args.repeat)
    print(f"load average after: {load()} on {os.cpu_count()} CPUs")
    return 0


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
