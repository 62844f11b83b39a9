"""One step in its own process: ``python -m ce.server.worker REPORT_FD`` (started by the supervisor).

The supervisor starts this in a new session (its own process group, so qemu-img and the libguestfs appliance are in
it too) and writes the job -- ``{"id", "type", "params", "disks"}`` with the *real* params, secrets included -- as
the first line of stdin; secrets never travel through argv, the environment or the state file. Later stdin lines are
commands (``cancel``). End of stdin means the service is gone: the step stops and takes its children with it (the
whole process group is killed on the way out).

Each disk param arrives as the real path the service checked against the attached disks at submit, and ``disks``
holds what it found there (device and inode, and the device number of a block device). Right before the step runs,
each path must still name that same file: a symlink or file swapped in between fails the step with
``disk_replaced`` and nothing is read.

Everything the step reports goes back as JSON lines on REPORT_FD: ``started``, ``progress``, ``warning``, ``log``
and one final ``done`` with the status, the result document and/or the error.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import stat
import sys
import threading
import time
import traceback

from .. import logs
from ..disks import chains
from ..errors import CeError
from ..errors import Canceled, DiskReplaced, StepFailed, Terminated, TimedOut
from ..step import StepContext, execute
from ..throughput import Throughput, transfer_fields
from .steps import step_types

EXIT_GRACE = 20          # seconds the step has to unwind after the service disappeared
PROGRESS_EVERY = 0.25    # seconds between two progress events with the same message; connectors poll about 1/s
SERVICE_GONE = threading.Event()    # stdin ended: nobody will reap what the step leaves in its process group


def disk_identity(path: str) -> dict:
    """What a disk's real path names now: device and inode (and the device number of a block or character device)."""
    info = os.stat(path)
    device = stat.S_ISBLK(info.st_mode) or stat.S_ISCHR(info.st_mode)
    return {"path": path, "dev": info.st_dev, "ino": info.st_ino, "rdev": info.st_rdev if device else None}


def check_disks(checked: dict[str, dict]) -> None:
    """Each disk param's path still names the file checked at submit (``checked``: param -> disk_identity)."""
    for name, was in checked.items():
        try:
            now = disk_identity(was["path"])
        except OSError as exc:
            raise DiskReplaced(f"params.{name}: {was['path']} was checked when the step was submitted but is gone "
                               f"now ({exc.strerror}); the step did not run") from None
        if now != {key: was.get(key) for key in now}:
            raise DiskReplaced(f"params.{name}: {was['path']} names another file than when the step was submitted "
                               f"(device/inode {was['dev']}/{was['ino']}, now {now['dev']}/{now['ino']}); the step "
                               f"did not run")


class Reporter:
    def __init__(self, fd: int):
        self._out = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def send(self, event: str, **fields) -> None:
        """An error's message is redacted like a log line: a mechanism's message may quote what it was given."""
        if isinstance(error := fields.get("error"), dict) and isinstance(error.get("message"), str):
            fields["error"] = {**error, "message": logs.redact(error["message"])}
        line = json.dumps({"event": event, **fields}, default=str)
        with self._lock:
            try:
                self._out.write(line + "\n")
            except (BrokenPipeError, ValueError):
                pass            # the service is gone; stdin's end of file stops us


class ReportHandler(logging.Handler):
    """Log records of the step (and of ce's mechanisms) travel to the service, redacted, as ``log`` events."""

    def __init__(self, reporter: Reporter):
        super().__init__(logging.DEBUG)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self.reporter.send("log", time=time.time(), level=record.levelname.lower(), logger=record.name,
                               message=logs.redact(message))
        except Exception:       # a log line must never break the step
            self.handleError(record)


class WorkerContext(StepContext):
    def __init__(self, step_id: str, reporter: Reporter):
        super().__init__(step_id=step_id, log=logging.getLogger("ce.step"))
        self.reporter = reporter
        self._last_progress: tuple[float, str] = (-PROGRESS_EVERY, "")
        self.throughput = Throughput()

    def progress(self, percent: float, message: str = "", transferred: tuple[int, int] | None = None) -> None:
        """Sent when the message changes, at 100 %, and otherwise at most every PROGRESS_EVERY seconds: a copy
        reporting each 8 MiB write would make the service write its state hundreds of times a second. A data
        path's bytes (``bytesDone``, ``bytesTotal``, ``bytesPerSecond``) travel in the same event."""
        percent, now = max(0.0, min(float(percent), 100.0)), time.monotonic()
        if transferred:
            self.throughput.add(now, transferred[0], message)
        last_time, last_message = self._last_progress
        if message == last_message and percent < 100.0 and now - last_time < PROGRESS_EVERY:
            return
        self._last_progress = (now, message)
        rate = self.throughput.rate(now) if transferred else None
        self.reporter.send("progress", percent=percent, message=logs.redact(message),
                           **transfer_fields(transferred, rate))

    def warn(self, code: str, message: str) -> None:
        super().warn(code, logs.redact(message))
        self.reporter.send("warning", code=code, message=logs.redact(message))


def watch_stdin(ctx: WorkerContext) -> None:
    for line in sys.stdin:
        if line.strip() == "cancel":
            ctx.log.info("cancel requested")
            ctx.cancel_event.set()
    # The service closed the pipe (or died): stop the step and everything it started.
    SERVICE_GONE.set()
    ctx.cancel_event.set()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(EXIT_GRACE)
    os.killpg(os.getpgid(0), signal.SIGKILL)


def on_sigterm(signum, frame):
    raise Terminated("the step was stopped by the service (cancel or timeout)")


def run(job: dict, reporter: Reporter) -> None:
    kind = step_types()[job["type"]]
    params = kind.parse(job["params"])
    for secret in logs.secret_values(params):
        logs.add_secret(secret)
    ctx = WorkerContext(job["id"], reporter)
    threading.Thread(target=watch_stdin, args=(ctx,), daemon=True, name="stdin").start()
    reporter.send("started", pid=os.getpid())
    try:
        if "attached" in job:
            chains.restrict_to(job["attached"])      # an image's chain may only lead to attached disks
        check_disks(job.get("disks") or {})
        result = execute(kind, params, ctx).model_dump(mode="json")
    except TimedOut as exc:             # the step's own deadline: a failure the connector can act on
        reporter.send("done", status="failed", error=exc.to_dict())
    except Canceled as exc:
        reporter.send("done", status="canceled", error=exc.to_dict())
    except StepFailed as exc:
        reporter.send("done", status="failed", error=exc.to_dict(), result=exc.result)
    except CeError as exc:
        if ctx.canceled() and isinstance(exc, Terminated):
            reporter.send("done", status="canceled", error=exc.to_dict())
        else:
            reporter.send("done", status="failed", error=exc.to_dict())
    else:
        reporter.send("done", status="succeeded", result=result)


def main() -> int:
    reporter = Reporter(int(sys.argv[1]))
    signal.signal(signal.SIGTERM, on_sigterm)
    root = logging.getLogger()
    root.handlers[:] = [ReportHandler(reporter)]
    root.setLevel(logging.INFO)
    logging.getLogger("sh").setLevel(logging.WARNING)
    try:
        job = json.loads(sys.stdin.readline())
        with logs.step_scope(job["id"]):
            run(job, reporter)
    except CeError as exc:
        reporter.send("done", status="failed", error=exc.to_dict())
    except Exception as exc:        # a bug: one line to the connector, the traceback to the step's log
        logging.getLogger("ce.worker").error("step crashed:\n%s", logs.redact(traceback.format_exc()))
        reporter.send("done", status="failed", error={"code": "internal_error", "message": logs.redact(
            f"the step crashed ({type(exc).__name__}: {exc}); its log has the details")})
    finally:
        if SERVICE_GONE.is_set() and os.getpgid(0) == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)      # nobody is left to reap the group: it goes with us
    return 0


if __name__ == "__main__":
    sys.exit(main())
