"""ce's hashing against a bare hashlib loop, md5sum and sha256sum, and the CLI's start-up, in one run.

    python -m bench.hashing [--size-mb 1024[,4096,8192]] [--repeat 5] [--dir DIR] [--skip library|process|startup]

For each ``--size-mb`` (a list, or the flag repeated) one file of random bytes is made, read once (the page cache
holds it: the figures are the CPU-bound case, as md5sum's are) and hashed with md5, sha256 and both by:

* ``ce.hashing`` (``hash_disk`` of the raw file, as ``ce hash`` does) in this process;
* two bare hashlib loops in this process: ``f.read(1 MiB)`` into ``update`` (what one writes first) and the
  standard library's own ``hashlib.file_digest``; for both algorithms, one loop feeding both hashers;
* whole processes: ``ce hash -a ALG FILE`` (start-up included) against ``md5sum`` / ``sha256sum`` (for both: one
  after the other, as a user would run them), and a bare python process (``hashlib.file_digest``, the interpreter's
  start-up and nothing else: the ceiling of any ``ce hash`` against the tools).

The contenders of one size and algorithm run interleaved (A B C A B C ...) ``--repeat`` times and the median
counts; the spread is (slowest - fastest) / median. Times are seconds per GiB, wall clock, with the CPU seconds
beside them (on a shared machine the CPU time moves less than the wall time). Ratios are reference time / ce time:
above 1 means ce is faster. Targets (issue 18): ce.hashing within 5 % of the faster bare loop (>= 0.95), ``ce hash``
at least as fast as md5sum / sha256sum (>= 1.0), md5 + sha256 together no slower than the slower alone + 10 %
(>= 0.91).

Start-up: ``ce --help`` and ``ce hash`` of an empty file (refused: the disk is empty), medians of
``--repeat`` * 4 runs, beside ``python -c pass`` (the interpreter and site alone); ``python -X importtime`` shows
where the time goes.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import compile_ce  # noqa: E402
from ce import hashing  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
SETS = (("md5",), ("sha256",), ("md5", "sha256"))
TOOLS = {"md5": "md5sum", "sha256": "sha256sum"}
LIBRARY_TARGET, TOOL_TARGET, BOTH_TARGET = 0.95, 1.0, 1 / 1.1


# ---------------------------------------------------------------- timing

def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Timing:
    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self, action) -> None:
        started, cpu = time.perf_counter(), cpu_seconds()
        action()
        self.wall.append(time.perf_counter() - started)
        self.cpu.append(cpu_seconds() - cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def spread(self) -> float:
        return (max(self.wall) - min(self.wall)) / self.median


def interleaved(repeat: int, contenders: dict) -> dict[str, Timing]:
    """Each round runs every contender once, in order, so a load spike on the shared machine hits all of them."""
    timings = {name: Timing() for name in contenders}
    for _ in range(repeat):
        for name, action in contenders.items():
            timings[name].run(action)
    return timings


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


# ---------------------------------------------------------------- contenders

def read_loop(path: Path, algorithms) -> list[str]:
    hashers = [hashlib.new(name) for name in algorithms]
    with open(path, "rb") as f:
        while block := f.read(MiB):
            for hasher in hashers:
                hasher.update(block)
    return [h.hexdigest() for h in hashers]


def file_digest(path: Path, algorithms) -> list[str]:
    if len(algorithms) > 1:                      # file_digest takes one algorithm: a loop like its own for several
        return readinto_loop(path, algorithms)
    with open(path, "rb") as f:
        return [hashlib.file_digest(f, algorithms[0]).hexdigest()]


def readinto_loop(path: Path, algorithms, size: int = 256 * 1024) -> list[str]:
    hashers = [hashlib.new(name) for name in algorithms]
    buffer = memoryview(bytearray(size))
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(buffer):
            for hasher in hashers:
                hasher.update(buffer[:got])
    return [h.hexdigest() for h in hashers]


def ce_command() -> list[str]:
    script = Path(sys.executable).parent / "ce"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ce.cli"]


BARE_PROCESS = "import hashlib, sys\nfor name in sys.argv[2:]:\n    hashlib.file_digest(open(sys.argv[1], 'rb'), name)"


def process(*command: str):
    def run() -> None:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run


def contenders_for(path: Path, algorithms: tuple[str, ...], skip: set[str]) -> dict:
    found: dict = {}
    if "library" not in skip:
        found["ce.hashing"] = lambda: hashing.hash_disk(path, "raw", algorithms)
        found["bare read loop"] = lambda: read_loop(path, algorithms)
        found["bare file_digest"] = lambda: file_digest(path, algorithms)
    if "process" not in skip:
        flags = [arg for name in algorithms for arg in ("-a", name)]
        found["ce hash (process)"] = process(*ce_command(), "hash", "-q", *flags, str(path))
        found["bare python (process)"] = process(sys.executable, "-c", BARE_PROCESS, str(path), *algorithms)
        tools = [process(TOOLS[name], str(path)) for name in algorithms]
        found[" + ".join(TOOLS[name] for name in algorithms)] = lambda: [run() for run in tools]
    return found


# ---------------------------------------------------------------- one size

def make_source(directory: Path, size_mb: int) -> Path:
    path = directory / f"dense-{size_mb}.raw"
    with open(path, "wb") as f:
        for offset in range(0, size_mb, 16):
            f.write(os.urandom(min(16, size_mb - offset) * MiB))
    subprocess.run(["sync"], check=True)
    return path


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def check_digests(path: Path) -> None:
    """The contenders must agree before they are timed."""
    ours = hashing.hash_disk(path, "raw").hashes
    for name, tool in TOOLS.items():
        theirs = subprocess.run([tool, str(path)], check=True, capture_output=True, text=True).stdout.split()[0]
        if theirs != ours[name] or read_loop(path, (name,)) != [theirs]:
            raise SystemExit(f"bench: {name} of {path} differs: ce {ours[name]}, {tool} {theirs}")


def bench_size(directory: Path, size_mb: int, repeat: int, skip: set[str]) -> list[tuple]:
    """Rows (size_mb, algorithms, contender, Timing)."""
    path = make_source(directory, size_mb)
    try:
        warm(path)
        check_digests(path)
        rows = []
        for algorithms in SETS:
            for name, timing in interleaved(repeat, contenders_for(path, algorithms, skip)).items():
                rows.append((size_mb, "+".join(algorithms), name, timing))
        return rows
    finally:
        path.unlink()


def times_table(rows: list[tuple]) -> list[str]:
    lines = [f"{'size MiB':>8}  {'hash':<10} {'contender':<20} {'s/GiB':>6} {'cpu s/GiB':>9} {'spread':>6}"]
    for size_mb, algorithms, name, timing in rows:
        per_gib = GiB / (size_mb * MiB)
        lines.append(f"{size_mb:>8}  {algorithms:<10} {name:<20} {timing.median * per_gib:6.2f} "
                     f"{statistics.median(timing.cpu) * per_gib:9.2f} {timing.spread:6.0%}")
    return lines


def ratios_table(rows: list[tuple]) -> list[str]:
    """reference / ce per size, judged on the median wall times; the fastest runs' ratio and the CPU time's beside
    it (on a loaded machine the wall clock's spread can exceed the differences measured)."""
    by = {(size, algorithms, name): timing for size, algorithms, name, timing in rows}
    lines = [f"{'size MiB':>8}  {'hash':<10} {'ce':<18} {'reference':<20} {'ratio':>6} {'fastest':>7} {'cpu':>6}  "
             "target (on the median)"]
    judged = missed = 0
    for size in sorted({row[0] for row in rows}):
        checks = []
        for algorithms in ("md5", "sha256", "md5+sha256"):
            tools = " + ".join(TOOLS[name] for name in algorithms.split("+"))
            checks += [(algorithms, "ce.hashing", (algorithms, name), LIBRARY_TARGET)
                       for name in ("bare read loop", "bare file_digest")]
            checks.append((algorithms, "ce hash (process)", (algorithms, tools), TOOL_TARGET))
        slower = max(("md5", "sha256"), key=lambda name: by[size, name, "ce.hashing"].median) \
            if all((size, name, "ce.hashing") in by for name in ("md5", "sha256")) else None
        if slower:
            checks.append(("md5+sha256", "ce.hashing", (slower, "ce.hashing"), BOTH_TARGET))
        for algorithms, ours, reference, target in checks:
            if (size, algorithms, ours) not in by or (size, *reference) not in by:
                continue
            mine, theirs = by[size, algorithms, ours], by[size, *reference]
            ratio = theirs.median / mine.median
            cpu = "-" if reference[1] == "ce.hashing" else \
                f"{statistics.median(theirs.cpu) / statistics.median(mine.cpu):.2f}"
            name = f"{reference[0]} alone (ce)" if reference[1] == "ce.hashing" else reference[1]
            judged, missed = judged + 1, missed + (ratio < target)
            lines.append(f"{size:>8}  {algorithms:<10} {ours:<18} {name:<20} {ratio:6.2f} "
                         f"{min(theirs.wall) / min(mine.wall):7.2f} {cpu:>6}  "
                         f"{'>=' if ratio >= target else 'MISSED <'} {target:.2f}")
    lines.append(f"{judged - missed} of {judged} ratios meet their target (reference time / ce time, medians of "
                 "interleaved runs; fastest: the fastest runs' ratio; cpu: the CPU seconds' ratio)")
    return lines


# ---------------------------------------------------------------- start-up

def startup(directory: Path, runs: int) -> list[str]:
    empty = directory / "empty.raw"
    empty.touch()
    commands = {"python -c pass": [sys.executable, "-c", "pass"], "ce --help": [*ce_command(), "--help"],
                "ce hash EMPTY": [*ce_command(), "hash", str(empty)]}
    timings = {name: Timing() for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            timings[name].run(lambda: subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    lines = [f"start-up ({runs} runs each, interleaved): {'median ms':>9} {'cpu ms':>7} {'fastest ms':>10}"]
    for name, timing in timings.items():
        lines.append(f"  {name:<39} {timing.median * 1000:9.0f} {statistics.median(timing.cpu) * 1000:7.0f} "
                     f"{min(timing.wall) * 1000:10.0f}")
    return lines


# ---------------------------------------------------------------- main

def sizes(values: list[str]) -> list[int]:
    found = [int(part) for value in values for part in value.split(",") if part.strip()]
    if not found or min(found) <= 0:
        raise argparse.ArgumentTypeError("--size-mb takes positive sizes in MiB: 1024 or 1024,4096,8192")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", action="append", default=[],
                        help="MiB per file; a list (1024,4096,8192) or the flag repeated (default 1024)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=os.environ.get("CE_SCRATCH") or "/var/tmp")
    parser.add_argument("--skip", action="append", default=[], choices=("library", "process", "startup"))
    args = parser.parse_args(argv)
    compile_ce()
    try:
        size_list = sizes(args.size_mb or ["1024"])
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(str(exc))
    for tool in ("md5sum", "sha256sum", "qemu-img"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (make setup installs it)", file=sys.stderr)
            return 1
    skip = set(args.skip)
    work = Path(tempfile.mkdtemp(prefix="ce-bench-hash-", dir=args.dir))
    print(f"load average before: {load()}", file=sys.stderr)
    rows: list = []
    out: list[str] = []
    try:
        if "startup" not in skip:
            out += startup(work, args.repeat * 4)
        if not {"library", "process"} <= skip:
            for size_mb in size_list:
                print(f"hashing {size_mb} MiB of random bytes in {work} ...", file=sys.stderr)
                rows += bench_size(work, size_mb, args.repeat, skip)
            out += times_table(rows) + ratios_table(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(out))
    print(f"load average after: {load()} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
