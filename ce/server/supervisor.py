"""Runs steps: one child process per step (``ce.server.worker``), one step at a time per disk, a deadline per step,
cancel that really stops the work, state kept in the store, status changes handed to the notifier.

Stopping a step (cancel or timeout) is cooperative first: the child's ``ctx.canceled()`` turns true and the step
cleans up its ``.partial`` files. After ``grace`` seconds the whole process group -- the worker, qemu-img, the
libguestfs appliance and its recovery process -- gets SIGTERM, then SIGKILL. This process is a child subreaper,
so whatever the worker leaves behind is re-parented here and reaped: no orphan or zombie survives a step.

Disks are checked once, at submit: each disk param is resolved to its real path, which must be an attached disk, and
the step process gets that path (never the name the request gave, which a symlink swap could repoint) together with
the device and inode found there, which it checks again right before the step runs (ce.server.worker).

Disk locks live in this process. A service that dies (kill -9, OOM) leaves its step processes running for a while
(each notices the end of its stdin and stops, but a step inside a long call takes up to the worker's EXIT_GRACE).
So every step row records its process (pid, start time, boot id), every step process carries ``CE_STEP_ID`` in its
environment, and on start-up ``stop_orphans`` stops what the interrupted steps left -- SIGTERM, then SIGKILL, and
waits until it is gone -- before the app accepts any step.
"""
from __future__ import annotations

import ctypes
import hashlib
import hmac
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

from pydantic import BaseModel, SecretBytes, SecretStr

from .. import logs
from ..disks import chains
from ..errors import (Canceled, Conflict, DiskBusy, InternalError, InvalidParams, NotFound, StepDeadline,
                      StepFinished, WorkerDied, naming_field)
from ..step import StepType
from ..throughput import TRANSFER_KEYS
from .priority import Launcher
from .processes import STEP_ENV, OrphanGroup, group_members, process_identity
from .store import Store
from .worker import disk_identity

log = logging.getLogger("ce.server")

DEFAULT_TIMEOUT = 7200          # seconds; the service's own default job timeout
CANCEL_GRACE = 15.0             # seconds between the cooperative cancel and SIGTERM of the group
KILL_GRACE = 5.0                # seconds between SIGTERM and SIGKILL
ORPHAN_WAIT = 20.0              # seconds start-up waits for a previous service's step processes to die after SIGKILL
PR_SET_CHILD_SUBREAPER = 36


def canceled() -> dict:
    """The error of a step canceled through the API."""
    return Canceled("the step was canceled").to_dict()


def become_subreaper() -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def canonical_params(type_name: str, params: BaseModel) -> bytes:
    """The full params (secrets revealed) as canonical JSON: equal params give equal bytes."""
    def reveal(obj):
        if isinstance(obj, (SecretStr, SecretBytes)):
            value = obj.get_secret_value()
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if isinstance(obj, Enum):
            return obj.value
        if isinstance(obj, (set, frozenset)):
            return sorted(obj, key=str)
        return str(obj)
    return json.dumps({"type": type_name, "params": params.model_dump(mode="python")}, default=reveal,
                      sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Running:
    id: str
    kind: StepType
    raw_params: dict
    disks: list[str]
    timeout: int
    secrets: list[str]
    checked: dict[str, dict] = field(default_factory=dict)     # disk param -> what its real path named at submit
    proc: subprocess.Popen | None = None
    cancel_requested: bool = False
    timed_out: bool = False
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Supervisor:
    def __init__(self, store: Store, types: dict[str, StepType], *, hmac_key: bytes, allowed_disks,
                 notify=lambda doc: None, default_timeout: int = DEFAULT_TIMEOUT,
                 cancel_grace: float = CANCEL_GRACE, kill_grace: float = KILL_GRACE):
        self.store, self.types, self.hmac_key = store, types, hmac_key
        self.allowed_disks = allowed_disks          # () -> list of real paths steps may touch
        self.notify = notify
        self.default_timeout = default_timeout
        self.step_env: dict[str, str] = {}         # added to each step's environment
        self.cancel_grace, self.kill_grace = cancel_grace, kill_grace
        self._lock = threading.Lock()
        self._disk_owner: dict[str, str] = {}
        self._orphans: set[str] = set()             # steps of a previous service whose processes did not stop
        self._running: dict[str, Running] = {}
        self._launcher = Launcher()                 # steps at the service's priority, not the request's
        self.subreaper = become_subreaper()

    # ------------------------------------------------------------ API

    def submit(self, step_id: str, type_name: str, raw_params: dict) -> tuple[dict, bool]:
        """Create a step (or return the existing one with the same id and params). Returns (row, created)."""
        kind = self.types.get(type_name)
        if kind is None:
            raise InvalidParams(f"unknown step type {type_name!r}; known: {', '.join(self.types)}", field="type")
        params = kind.parse(raw_params)
        fingerprint = hmac.new(self.hmac_key, canonical_params(type_name, params), hashlib.sha256).hexdigest()
        with self._lock:
            existing = self.store.get(step_id)
            if existing:
                if not hmac.compare_digest(existing["params_hmac"], fingerprint):
                    raise Conflict(f"step {step_id} already exists with a different type or params; "
                                   f"use a new step id for different work")
                return existing, False
            checked = self._check_disks(kind, params)
            disks = list(dict.fromkeys(path for c in checked.values() for path in (c["path"], *c["chain"])))
            for disk in disks:
                owner = self._disk_owner.get(disk)
                if owner in self._orphans:
                    raise DiskBusy(f"disk {disk} is still in use by processes of step {owner}, which the service's "
                                   f"restart interrupted and which did not stop when killed; submit again once they "
                                   f"are gone")
                if owner:
                    raise DiskBusy(f"disk {disk} is in use by step {owner}; wait for it to finish or cancel it")
            timeout = int(getattr(params, "timeout", None) or self.default_timeout)
            now = time.time()
            self.store.insert({"id": step_id, "type": type_name, "params": params.model_dump(mode="json"),
                               "params_hmac": fingerprint, "disks": disks, "status": "pending", "timeout": timeout,
                               "created": now})
            for disk in disks:
                self._disk_owner[disk] = step_id
            running = Running(step_id, kind, raw_params, disks, timeout, logs.secret_values(params), checked)
            self._running[step_id] = running
        for secret in running.secrets:
            logs.add_secret(secret)
        row = self.store.get(step_id)
        self.notify(row)
        self._launcher.start(self._supervise, (running,), name=f"step-{step_id}")
        return row, True

    def cancel(self, step_id: str) -> dict:
        row = self.store.get(step_id)
        if row is None:
            raise NotFound(f"no step {step_id}")
        if row["status"] in ("succeeded", "failed"):
            raise StepFinished(f"step {step_id} already {row['status']}; nothing to cancel")
        with self._lock:
            running = self._running.get(step_id)
        if running and not running.cancel_requested:
            running.cancel_requested = True
            self.store.update(step_id, cancel_requested=1, message="canceling")
            log.info("cancel requested", extra={"step_id": step_id})
            self._stop(running)
        return self.store.get(step_id)

    def disk_owner(self, disk: str) -> str | None:
        return self._disk_owner.get(disk)

    def stop_orphans(self, interrupted: list[dict], wait: float = ORPHAN_WAIT) -> None:
        """Start-up, before any step is accepted: stop the processes that the steps ``interrupted`` by the restart
        (their store rows) left running -- SIGTERM (the step unwinds and removes its ``.partial`` files), SIGKILL
        after ``kill_grace``, then wait up to ``wait`` seconds until they are gone. A process is only ever signalled
        as a step's if it is provably that step's: its group leader with the recorded pid *and* start time (a reused
        pid is someone else), or -- the leader gone -- a member of its group carrying the step's ``CE_STEP_ID``.
        Processes that outlive even that (stuck in the kernel) keep their step's disks locked until they are gone.

        Waiting here rather than locking the disks from the start keeps one rule for the connector: once the
        service answers, nothing of a previous service runs; the wait is bounded by SIGKILL."""
        orphans = {}
        for row in interrupted:
            worker = row.get("worker")
            if worker and (group := OrphanGroup.find(row["id"], worker)):
                orphans[row["id"]] = (group, row["disks"])
        if not orphans:
            return
        for step_id, (group, _) in orphans.items():
            log.warning("stopping the processes the restart left of step %s: %s", step_id, group.processes(),
                        extra={"step_id": step_id})
        for sig, within in ((signal.SIGTERM, self.kill_grace), (signal.SIGKILL, wait)):
            for group, _ in orphans.values():
                group.signal(sig)
            end = time.monotonic() + within
            while any(g.processes() for g, _ in orphans.values()) and time.monotonic() < end:
                time.sleep(0.1)
        for step_id, (group, disks) in orphans.items():
            survivors = group.processes()
            if not survivors:
                log.info("the processes of interrupted step %s are gone", step_id, extra={"step_id": step_id})
                continue
            log.error("processes of interrupted step %s survive SIGKILL: %s; its disks stay locked until they are "
                      "gone: %s", step_id, survivors, ", ".join(disks), extra={"step_id": step_id})
            with self._lock:
                self._orphans.add(step_id)
                for disk in disks:
                    self._disk_owner[disk] = step_id
            threading.Thread(target=self._release_when_gone, args=(step_id, group, disks), daemon=True,
                             name=f"orphan-{step_id}").start()

    def _release_when_gone(self, step_id: str, group: "OrphanGroup", disks: list[str]) -> None:
        while group.processes():
            group.signal(signal.SIGKILL)
            time.sleep(1.0)
        with self._lock:
            for disk in disks:
                if self._disk_owner.get(disk) == step_id:
                    del self._disk_owner[disk]
            self._orphans.discard(step_id)
        log.info("the processes of interrupted step %s are gone; its disks are free", step_id,
                 extra={"step_id": step_id})

    def shutdown(self) -> None:
        """Service stopping: stop every running step (they will read as interrupted after a restart)."""
        with self._lock:
            running = list(self._running.values())
        for r in running:
            self._stop(r, grace=0)

    # ------------------------------------------------------------ internals

    def _check_disks(self, kind: StepType, params: BaseModel) -> dict[str, dict]:
        """Each disk param's real path, checked against the attached disks, and what it names now
        (``worker.disk_identity``): the step process gets exactly these."""
        wanted = kind.disks(params)
        if not wanted:
            return {}
        allowed = self.allowed_disks()
        out = {}
        for name, value in zip(kind.disk_params, (getattr(params, n, None) for n in kind.disk_params)):
            if not value:
                continue
            try:
                real = os.path.realpath(str(value))
                identity = disk_identity(real) if real in allowed else None
            except (ValueError, OSError):
                identity = None
            if identity is None:
                raise InvalidParams(f"params.{name}: {value!r} is not a disk attached to this CE; attached: "
                                    f"{', '.join(allowed) or 'none'}", field=name)
            with naming_field(name):
                identity["chain"] = [] if identity["rdev"] is not None else chains.vet(real)
            out[name] = identity
        return out

    def _supervise(self, r: Running) -> None:
        with logs.step_scope(r.id):
            try:
                self._run_child(r)
            except Exception:
                log.exception("supervising the step failed")
                self._finish(r, "failed", error=InternalError("the service could not run the step; see its log")
                             .to_dict())
            finally:
                with self._lock:
                    for disk in r.disks:
                        if self._disk_owner.get(disk) == r.id:
                            del self._disk_owner[disk]
                    self._running.pop(r.id, None)
                for secret in r.secrets:
                    logs.remove_secret(secret)

    def _run_child(self, r: Running) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, STEP_ENV: r.id}
        env.update(self.step_env)               # the bootstrap's limits for steps (create_app: Bootstrap.step_env)
        with r.lock:
            if r.cancel_requested:
                os.close(read_fd), os.close(write_fd)
                self._finish(r, "canceled", error=canceled())
                return
            r.proc = subprocess.Popen([sys.executable, "-m", "ce.server.worker", str(write_fd)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      pass_fds=(write_fd,), start_new_session=True, env=env, text=True,
                                      errors="replace")
        os.close(write_fd)
        output = threading.Thread(target=self._relay_output, args=(r, r.proc.stdout), daemon=True,
                                  name=f"output-{r.id}")
        output.start()
        deadline = threading.Timer(r.timeout, self._on_timeout, args=(r,))
        deadline.daemon = True
        done = None
        events = os.fdopen(read_fd, encoding="utf-8")
        try:
            # Recorded before the child has its job: a process of this step that a restart could miss never works.
            self.store.update(r.id, worker=process_identity(r.proc.pid))
            # Each disk param as the real path checked at submit, with what it named then (the child checks it).
            r.proc.stdin.write(json.dumps({"id": r.id, "type": r.kind.name, "disks": r.checked,
                                           "attached": self.allowed_disks(), "params": {
                **r.raw_params, **{name: checked["path"] for name, checked in r.checked.items()}}}) + "\n")
            r.proc.stdin.flush()
            r.raw_params = {}                         # the child has them; drop the secrets from this process
            deadline.start()
            with events:
                for line in events:
                    event = json.loads(line)
                    if event["event"] == "done":
                        done = event
                    else:
                        self._on_event(r, event)
            code = r.proc.wait()
            output.join(5)
        finally:
            deadline.cancel()
            events.close()
            self._reap_group(r.proc.pid)
            try:
                r.proc.stdin.close()
            except OSError:
                pass
        self._conclude(r, done, code)

    def _relay_output(self, r: Running, stream) -> None:
        """What the step's processes print outside ce's logging (qemu, libguestfs, Python warnings): into the step
        log and the service log as JSON lines with the step id, like everything else."""
        out = logging.getLogger("ce.step.output")
        for line in stream:
            line = logs.redact(line.rstrip())
            if line:
                self.store.append_log(r.id, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "info", line)
                out.info("%s", line, extra={"step_id": r.id})

    def _on_event(self, r: Running, event: dict) -> None:
        kind = event["event"]
        if kind == "started":
            self.store.update(r.id, status="running", started=time.time())
            self.notify(self.store.get(r.id))
        elif kind == "progress":
            transfer = {k: event[k] for k in TRANSFER_KEYS if k in event}
            self.store.update(r.id, progress=event["percent"], message=event["message"], transfer=transfer or None)
        elif kind == "warning":
            row = self.store.get(r.id)
            self.store.update(r.id, warnings=[*row["warnings"], {"code": event["code"], "message": event["message"]}])
        elif kind == "log":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event["time"]))
            self.store.append_log(r.id, stamp, event["level"], event["message"])
            logging.getLogger(event.get("logger") or "ce.step").log(
                logging.getLevelName(event["level"].upper()), "%s", event["message"], extra={"step_id": r.id})

    def _conclude(self, r: Running, done: dict | None, exit_code: int) -> None:
        result = done.get("result") if done else None
        if done and done["status"] == "succeeded":
            self._finish(r, "succeeded", result=result, progress=100.0, message="done")
        elif r.timed_out:
            self._finish(r, "failed", result=result, error=StepDeadline(
                f"the step did not finish within its timeout of {r.timeout} s and was stopped; raise params.timeout "
                f"or check the CE's load").to_dict())
        elif r.cancel_requested:
            self._finish(r, "canceled", result=result, error=canceled())
        elif done:
            self._finish(r, done["status"], result=result, error=done.get("error"))
        else:
            self._finish(r, "failed", error=WorkerDied(f"the step's process ended without a result (exit status "
                                                        f"{exit_code}); see the step log").to_dict())

    def _finish(self, r: Running, status: str, **fields) -> None:
        if self.store.finish(r.id, status, **fields):
            row = self.store.get(r.id)
            log.info("step %s", status, extra={"step_id": r.id, "event": status,
                                               "code": (row.get("error") or {}).get("code")})
            self.notify(row)

    def _on_timeout(self, r: Running) -> None:
        r.timed_out = True
        log.warning("step timed out after %d s", r.timeout, extra={"step_id": r.id})
        self.store.update(r.id, message="timed out, stopping")
        self._stop(r)

    def _stop(self, r: Running, grace: float | None = None) -> None:
        """Cooperative cancel now; SIGTERM to the group after the grace period, SIGKILL after that."""
        with r.lock:
            proc = r.proc
            if proc is None or r.stopping.is_set():
                return
            r.stopping.set()
        try:
            proc.stdin.write("cancel\n")
            proc.stdin.flush()
        except (OSError, ValueError):
            pass
        threading.Thread(target=self._escalate, args=(proc, self.cancel_grace if grace is None else grace),
                         daemon=True, name=f"stop-{r.id}").start()

    def _escalate(self, proc: subprocess.Popen, grace: float) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, self.kill_grace)):
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return

    def _reap_group(self, pgid: int, within: float = 30.0) -> None:
        """Kill and reap whatever is left in the step's process group (re-parented to us as subreaper)."""
        end = time.monotonic() + within
        while time.monotonic() < end:
            members = group_members(pgid)
            if not members:
                return
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for pid in members:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass            # not ours (no subreaper): init reaps it
            time.sleep(0.1)
        log.error("processes of step group %d survive: %s", pgid, group_members(pgid))
