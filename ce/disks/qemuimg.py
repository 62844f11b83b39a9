"""The qemu-img runner: every call is a plain child process (not ``sh``: importing it took 30 ms, a sixth of
``ce hash``'s start-up); a failure becomes the caller's DiskError subclass whose message carries qemu-img's own
(trimmed) reason; long runs report their ``-p`` progress and are killed on cancel.

The subcommands ce uses have one function each here (info, check, measure, compare, create, convert); what their
answers mean for a disk (probing, subformats, output verification) is ce.disks.probe and ce.disks.create.
"""
from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
from contextlib import suppress
from dataclasses import asdict, dataclass

from ..errors import Canceled, ConversionFailed, DiskError, DiskUnreadable, QemuImgMissing
from .formats import FORMAT_LABELS

log = logging.getLogger(__name__)

CONVERT_FLAGS = ("-p", "-W", "-m", "8")      # fastest measured here; -t/-T none were 2-3x slower
# outputs whose writers qemu-img runs faster in order: out-of-order writes (-W) made raw -> qcow2 and -> vhdx take
# 1.5-3x the CPU and wall time of qemu-img's defaults here, and qcow2 / VHDX / VHD -> raw 1.1-2x the system CPU
# (bench/disks.py; README "Speed")
IN_ORDER_OUTPUTS = {"qcow2", "vhdx", "raw"}
CHECK_OK = (0, 2, 3)                         # clean, corruptions found, leaks found
CHECK_UNSUPPORTED = 63
POLL_SECONDS = 0.1
REASON_LINES, REASON_CHARS = 2, 400


@dataclass
class CheckResult:
    path: str
    format: str
    supported: bool
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    detail: str = ""                 # qemu-img's own lines, trimmed

    @property
    def ok(self) -> bool:
        """Leaked clusters only waste space; corruptions and check errors make the image unsafe to use."""
        return not (self.corruptions or self.check_errors)

    @property
    def message(self) -> str:
        if not self.supported:
            return f"qemu-img cannot check {FORMAT_LABELS[self.format]} images"
        counts = [f"{n} {what}" for n, what in ((self.corruptions, "corruptions"), (self.leaks, "leaked clusters"),
                                               (self.check_errors, "check errors")) if n]
        if not counts:
            return "no errors found"
        return ", ".join(counts) + (f" ({self.detail})" if self.detail else "")

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok, "message": self.message}


@dataclass
class Measurement:
    required: int                    # bytes the output needs for the allocated data
    fully_allocated: int             # bytes if every cluster were written


# ---------------------------------------------------------------- subcommands

def info(target: str, fmt: str | None, *, doing: str) -> dict:
    """``qemu-img info`` of ``target`` (a path, URI or json: target) with force-share; ``fmt`` None probes."""
    fmt_args = ("-f", fmt) if fmt else ()
    return json.loads(run("info", "-U", "--output=json", *fmt_args, target, fails_as=DiskUnreadable,
                          doing=doing).stdout)


def check(path: str, fmt: str, *target: str, doing: str) -> CheckResult:
    """``qemu-img check`` of the image named by the ``target`` arguments, reported as ``path`` in ``fmt``."""
    result = run("check", "--output=json", *target, ok=(*CHECK_OK, CHECK_UNSUPPORTED), fails_as=DiskUnreadable,
                 doing=doing)
    if result.exit_code == CHECK_UNSUPPORTED:
        return CheckResult(path, fmt, supported=False)
    found = json.loads(result.stdout)
    return CheckResult(path, fmt, supported=True, corruptions=found.get("corruptions", 0),
                       leaks=found.get("leaks", 0), check_errors=found.get("check-errors", 0),
                       detail=reason(result.stderr))


def measure(path: str, src_fmt: str, dst_fmt: str) -> Measurement:
    result = run("measure", "--output=json", "-O", dst_fmt, "-f", src_fmt, path, fails_as=DiskUnreadable,
                 doing=f"cannot measure {path}")
    data = json.loads(result.stdout)
    return Measurement(required=data["required"], fully_allocated=data["fully-allocated"])


def compare(a: str, fmt_a: str, b: str, fmt_b: str) -> bool:
    result = run("compare", "-U", "-f", fmt_a, "-F", fmt_b, a, b, ok=(0, 1), fails_as=DiskError,
                 doing=f"cannot compare {a} with {b}")
    return result.exit_code == 0


def create(path: str, fmt: str, size: int | None, *options: str, fails_as: type[DiskError] = ConversionFailed,
           doing: str) -> None:
    """``qemu-img create -q -f fmt OPTIONS path [size]``: ``options`` such as ``-o ...``, ``-b backing -F fmt``."""
    run("create", "-q", "-f", fmt, *options, path, *([] if size is None else [str(size)]), fails_as=fails_as,
        doing=doing)


def convert(args: list[str], *, output_format: str, progress, cancel, doing: str,
            canceled_message: str | None = None) -> None:
    """``qemu-img convert`` with CONVERT_FLAGS (without -W for IN_ORDER_OUTPUTS) and ``args``, watched (see
    ``run_watched``)."""
    flags = ("-p",) if output_format in IN_ORDER_OUTPUTS else CONVERT_FLAGS
    run_watched(["convert", *flags, *args], progress=progress, cancel=cancel, doing=doing,
                canceled_message=canceled_message)


# ---------------------------------------------------------------- running

@dataclass
class Ran:
    """A finished qemu-img: its exit code and output; ``str()`` is its stdout as text."""
    exit_code: int
    stdout: bytes
    stderr: bytes

    def __str__(self) -> str:
        return self.stdout.decode(errors="replace")


def run(*args: str, ok=(0,), fails_as: type[DiskError], doing: str) -> Ran:
    """Run qemu-img to the end; an exit code outside ``ok`` raises ``fails_as("doing: qemu-img's reason")``."""
    log.debug("qemu-img %s", " ".join(args))
    try:
        done = subprocess.run(["qemu-img", *args], stdin=subprocess.DEVNULL, capture_output=True)
    except FileNotFoundError:
        raise QemuImgMissing("qemu-img is not installed: install the qemu-utils package") from None
    if done.returncode not in ok:
        raise fails_as(f"{doing}: {reason(done.stderr)}")
    return Ran(done.returncode, done.stdout, done.stderr)


def run_watched(args: list[str], *, progress, cancel, doing: str, canceled_message: str | None = None) -> None:
    """Run a long qemu-img command, reporting its -p progress; kill it on cancel or when ``progress`` raises.

    A plain child with a reader thread per pipe: run through sh, the same qemu-img convert used up to 1.5x the CPU
    and wall time here."""
    log.debug("qemu-img %s", " ".join(args))
    meter = ProgressMeter(progress)
    try:
        proc = subprocess.Popen(["qemu-img", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise QemuImgMissing("qemu-img is not installed: install the qemu-utils package") from None
    stderr = bytearray()
    progress_text = lambda chunk: meter.feed(chunk.decode(errors="replace"))      # noqa: E731
    readers = [threading.Thread(target=_pump, args=(proc.stdout, progress_text), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, stderr.extend), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        while proc.poll() is None and not (is_canceled(cancel) or meter.error):
            with suppress(subprocess.TimeoutExpired):
                proc.wait(POLL_SECONDS)          # back as soon as qemu-img exits
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for reader in readers:
            reader.join()
    if meter.error:
        raise meter.error
    stop_if_canceled(cancel, canceled_message)
    if proc.returncode != 0:
        raise ConversionFailed(f"{doing}: {reason(bytes(stderr))}")
    meter.finish()


def _pump(stream, sink) -> None:
    with stream:
        for chunk in iter(lambda: stream.read1(4096), b""):
            sink(chunk)


class ProgressMeter:
    """Parses qemu-img's "    (12.34/100%)\\r" stream, which arrives in arbitrary chunks."""

    PATTERN = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")

    def __init__(self, callback):
        self.callback = callback
        self.last = -1.0
        self.tail = ""
        self.error: BaseException | None = None

    def feed(self, chunk: str) -> None:
        text = self.tail + chunk
        self.tail = text[text.rfind(")") + 1:][-32:]
        for value in self.PATTERN.findall(text):
            self._report(float(value))

    def finish(self) -> None:
        self._report(100.0)

    def _report(self, percent: float) -> None:
        if percent <= self.last or self.error:
            return
        self.last = percent
        if self.callback:
            try:
                self.callback(percent)
            except Exception as exc:     # runs in a reader thread: hand it to the caller's thread
                self.error = exc


# ---------------------------------------------------------------- cancel

def is_canceled(cancel) -> bool:
    """``cancel`` is None, a threading.Event or a callable that returns true once the work should stop."""
    if cancel is None:
        return False
    return cancel.is_set() if hasattr(cancel, "is_set") else bool(cancel())


def stop_if_canceled(cancel, message: str | None = None) -> None:
    if is_canceled(cancel):
        raise Canceled(message or "the disk operation was canceled; no output was kept")


def reason(stderr: bytes) -> str:
    """qemu-img's message without its prefixes and repeats, at most a couple of lines."""
    lines: list[str] = []
    for line in stderr.decode(errors="replace").splitlines():
        line = re.sub(r"^(qemu-img: |ERROR: )", "", line.strip())
        line = re.sub(r"(Could not open '[^']*': )\1+", r"\1", line)
        if line and line not in lines:
            lines.append(line)
    text = "; ".join(lines[:REASON_LINES])
    if len(lines) > REASON_LINES:
        text += f" (+{len(lines) - REASON_LINES} more)"
    return (text or "no reason given")[:REASON_CHARS]
