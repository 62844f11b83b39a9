"""What the CLI prints: progress on stderr while a step runs, then its plan or result -- as JSON, or as lines for
people made by the change kinds (``ce.changes.describe``) and the step's own ``describe``.

Progress, as virt-v2v shows it: on a terminal a bar redrawn in place (and every second while nothing reports, so a
stall shows) with the elapsed time and an estimate of what is left, and for data work the bytes done, their total
and the rate over the last few seconds; otherwise one line per phase, ``[  12.3] inspecting the image`` (a data
phase with its size: ``[   0.1] hashing the file (4 GiB)``); with ``--machine-readable`` one JSON object per change
(``{"elapsed", "percent", "message"}``, and ``bytesDone``, ``bytesTotal``, ``bytesPerSecond`` when known) on stderr
(``--machine-readable-fd FD``: on FD), for scripts. ``-q`` silences the first two.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections import Counter

from ..changes import Plan, Result, describe
from ..errors import CeError, InvalidParams, StepFailed
from ..sizes import human_size
from ..step import StepContext, execute
from ..throughput import Throughput, figures, transfer_fields

REDRAW_EVERY = 0.1      # seconds between two redraws of the bar within a phase (a hash reports every 8 MiB)


class ConsoleContext(StepContext):
    """Progress on stderr (see the module's docstring)."""

    def __init__(self, quiet: bool = False, machine_fd: int | None = None):
        super().__init__()
        self.quiet, self.started, self.phase = quiet, time.monotonic(), None
        self.tty = sys.stderr.isatty() and not quiet
        try:
            self.machine = os.fdopen(os.dup(machine_fd), "w", buffering=1) if machine_fd is not None else None
        except OSError as exc:
            raise InvalidParams(f"--machine-readable-fd {machine_fd}: {exc.strerror}") from None
        self.last = (-1.0, "")
        self.throughput, self.shown, self.drawn = Throughput(), (0.0, "", None), 0.0
        self.lock, self.finished = threading.Lock(), threading.Event()
        if self.tty:
            threading.Thread(target=self._tick, daemon=True, name="progress").start()

    def progress(self, percent: float, message: str = "", transferred: tuple[int, int] | None = None) -> None:
        percent, now = max(0.0, min(float(percent), 100.0)), time.monotonic()
        with self.lock:
            if transferred:
                self.throughput.add(now, transferred[0], message)
            rate = self.throughput.rate(now) if transferred else None
            if self.machine and (round(percent, 1), message) != self.last:
                self.last = (round(percent, 1), message)
                self._machine_line({"elapsed": round(now - self.started, 3), "percent": round(percent, 1),
                                    "message": message, **transfer_fields(transferred, rate)})
            self.shown = (percent, message, transferred)
            self._show(now)
            self.phase = message

    def _show(self, now: float) -> None:
        """On a terminal the bar (a few times a second at most); otherwise one line per phase."""
        percent, message, transferred = self.shown
        if self.tty and (message != self.phase or percent == 100 or now - self.drawn >= REDRAW_EVERY):
            self._draw(now)
        elif not self.tty and not self.quiet and message and message != self.phase:
            size = f" ({human_size(transferred[1])})" if transferred else ""
            sys.stderr.write(f"[{now - self.started:7.1f}] {message}{size}\n")
            sys.stderr.flush()

    def _draw(self, now: float) -> None:
        """The bar as ``shown``, narrower and then cut on a narrow terminal (a wrapped line cannot be redrawn)."""
        percent, message, transferred = self.shown
        rate = self.throughput.rate(now) if transferred else None
        width = shutil.get_terminal_size().columns - 1
        line = bar(percent, now - self.started, message, transferred, rate)
        if len(line) > width:
            line = bar(percent, now - self.started, message, transferred, rate, cells=max(30 - len(line) + width, 10))
        sys.stderr.write("\r" + line[:width].ljust(width))
        sys.stderr.flush()
        self.drawn = now

    def _tick(self) -> None:
        """Redraw every second: the clock moves and a stalled transfer's rate falls while nothing reports."""
        while not self.finished.wait(1.0):
            with self.lock:
                if not self.finished.is_set():
                    self._draw(time.monotonic())

    def _machine_line(self, event: dict) -> None:
        """A reader that went away (``| head``) stops the progress lines, never the step."""
        try:
            self.machine.write(json.dumps(event) + "\n")
        except (OSError, ValueError):
            self.machine = None

    def done(self) -> None:
        with self.lock:
            self.finished.set()
        if self.tty:
            sys.stderr.write("\r" + " " * (shutil.get_terminal_size().columns - 1) + "\r")
        if self.machine:
            try:
                self.machine.close()
            except OSError:
                pass


def bar(percent: float, elapsed: float, message: str, transferred: tuple[int, int] | None = None,
        rate: float | None = None, cells: int = 30) -> str:
    """``[#########.....................]  30.0%  0:12, ~0:28 left  inspecting the image``; for data work
    ``[############..................]  42.0%  1.7 GiB / 4 GiB  210 MiB/s  0:08, ~0:11 left  exporting``"""
    filled = int(percent / 100 * cells)
    left = f", ~{clock(elapsed * (100 - percent) / percent)} left" if 1 <= percent < 100 else ""
    return (f"[{'#' * filled}{'.' * (cells - filled)}] {percent:5.1f}%  {figures(transferred, rate)}"
            f"{clock(elapsed)}{left}  {message}")


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def run_step(kind, params, args) -> tuple[Plan | Result, CeError | None]:
    """Run a step in this process (``args``: the command line's -q and --machine-readable); a StepFailed still
    yields its partial result."""
    ctx = ConsoleContext(quiet=getattr(args, "quiet", False), machine_fd=getattr(args, "machine_readable", None))
    try:
        return execute(kind, params, ctx), None
    except StepFailed as exc:
        return Result.model_validate(exc.result), exc
    finally:
        ctx.done()


def show(kind, document: Plan | Result, error: CeError | None, as_json: bool) -> None:
    if as_json:
        body = document.model_dump(mode="json")
        print(json.dumps({**body, **({"error": error.to_dict()} if error else {})}, indent=2))
        return
    lines = [line for line in describe(document) if not line.startswith("warning [")]
    if kind.describe:
        lines = [line for line in lines if line != "nothing to change"] + kind.describe(document)
    backups = [windows_path(c["backupPath"]) for c in document.facts.get("commits", []) if c.get("backupCreated")]
    lines += [f"backup        {path}" for path in backups]
    lines += [f"warning [{w.code}]: {w.message}" for w in document.warnings]
    lines.append(summary(document, len(backups)))
    print("\n".join(lines))


def windows_path(guest_path: str) -> str:
    """/Windows/System32/config/... (the Windows volume, as libguestfs names it) as C:\\Windows\\... like the
    files a plan writes; a path on another filesystem (the ESP) as it is."""
    if guest_path.lower().startswith("/windows/"):
        return "C:" + guest_path.replace("/", "\\")
    return guest_path


def summary(document: Plan | Result, backups: int) -> str:
    """The one line every run ends with: changes per kind, backups, warnings, time."""
    changes, warnings = _tally(document)
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(changes.items()))
    total = sum(changes.values())
    if isinstance(document, Plan):
        what = f"dry run: {total} change{'s' * (total != 1)} would be made" if total else "dry run: nothing to change"
    else:
        state = "failed" if document.error else "done"
        what = f"{state} in {document.seconds:.1f} s: {total} change{'s' * (total != 1)} applied"
    return "; ".join(filter(None, [what + (f" ({kinds})" if kinds else ""),
                                   f"{backups} backup{'s' * (backups != 1)}" if backups else "",
                                   f"{warnings} warning{'s' * (warnings != 1)}"]))


def _tally(document: Plan | Result) -> tuple[Counter, int]:
    """(applied or planned changes per kind, warnings), the parts of a sequence included."""
    if isinstance(document, Plan):
        changes = Counter(c.kind for c in document.changes)
    else:
        changes = Counter(o.change.kind for o in document.outcomes if o.status == "applied")
    warnings = len(document.warnings)
    for part in document.parts:
        more, more_warnings = _tally(part)
        changes += more
        warnings += more_warnings
    return changes, warnings
