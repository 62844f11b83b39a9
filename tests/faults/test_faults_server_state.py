"""The server's own state against a hostile or crashing world (issue 16, items 3, 7 and 8), with the real server
(gunicorn, mutual TLS, token) and real step processes:

* a disk param is checked once, at submit: a symlink repointed after the ``202`` does not make the step read the
  file it now names, and a disk file replaced after the ``202`` fails the step with ``disk_replaced`` unread;
* a service killed with -9 leaves step processes behind; the next service stops them (SIGTERM, then SIGKILL) before
  it accepts a step, so no new step runs on a disk an orphan still works on -- and a step process whose service is
  gone takes its whole process group with it;
* ``state_dir`` is 0700 and the SQLite files (database, ``-wal``, ``-shm``) 0600 under a umask of 022, and wider
  modes found on start-up are tightened.

This module's ``STEPS`` are test-only step types the servers here serve (with those of the harness).
"""
from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import stat
import time
import uuid
from pathlib import Path

import pytest
from pydantic import Field

from ce.changes import Plan, Result
from ce.errors import BootstrapInvalid
from ce.server.store import SCHEMA, Store
from ce.server.processes import group_members
from ce.step import StepContext, StepParams, StepType
from tests.support.server_harness import ServerProcess, alive, processes_with, wait_until

EXTRA_STEPS = {"CE_EXTRA_STEP_MODULES": "tests.support.server_harness,tests.faults.test_faults_server_state"}
MiB = 1 << 20


# ---------------------------------------------------------------- test-only step types

class HoldParams(StepParams):
    disk: str                              # the attached disk it holds (never opened)
    pidfile: str                           # it writes its pid here once it works
    seconds: float = 120.0


def run_hold(params: HoldParams, plan: Plan, ctx: StepContext) -> Result:
    """A step deep in a long call (a qemu-img run, a libguestfs call): SIGTERM and cancel change nothing, only
    SIGKILL stops it -- or, once its service is gone, the step process's own EXIT_GRACE (20 s)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(params.pidfile).write_text(str(os.getpid()))
    time.sleep(params.seconds)
    return Result.of(plan, facts={"held": params.seconds})


class ProbeParams(StepParams):
    disk: str                              # the attached disk it holds (never opened)
    watch: int = Field(description="a pid: is that process alive while this step runs on the disk?")


def run_probe(params: ProbeParams, plan: Plan, ctx: StepContext) -> Result:
    return Result.of(plan, facts={"watched_alive": alive(params.watch)})


def plan_nothing(params, ctx: StepContext) -> Plan:
    return Plan(step="test")


STEPS = (StepType(name="test-hold", summary="TEST ONLY: hold a disk, deaf to SIGTERM and cancel", Params=HoldParams,
                  plan=plan_nothing, apply=run_hold, disk_params=("disk",)),
         StepType(name="test-probe", summary="TEST ONLY: on a disk, report whether a process lives",
                  Params=ProbeParams, plan=plan_nothing, apply=run_probe, disk_params=("disk",)))


# ---------------------------------------------------------------- helpers

def new_id() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def create(srv: ServerProcess, api, type_name: str, params: dict) -> str:
    step_id = new_id()
    response = api.post(srv.url + "/v1/steps", json={"id": step_id, "type": type_name, "params": params}, timeout=30)
    assert response.status_code == 202, response.text
    return step_id


def wait_terminal(srv: ServerProcess, api, step_id: str, timeout: float = 60) -> dict:
    def terminal():
        doc = api.get(f"{srv.url}/v1/steps/{step_id}", timeout=10).json()
        return doc if doc["status"] in ("succeeded", "failed", "canceled") else None
    return wait_until(terminal, timeout, f"step {step_id} to finish")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def kill_all(pids) -> None:
    """Cleanup after a failed run: whatever the test left alive."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- item 3: a disk is checked once

def test_a_symlink_repointed_after_the_202_does_not_choose_what_the_step_reads(tmp_path, pki):
    """The request names a symlink to an attached disk; right after the 202 the symlink is pointed at a secret file
    that is not attached. The hash is the attached disk's (the step process got the real path checked at submit),
    never the secret's."""
    disk, secret, link = tmp_path / "disk.img", tmp_path / "secret.img", tmp_path / "link.img"
    disk.write_bytes(os.urandom(MiB))
    secret.write_bytes(os.urandom(MiB))
    link.symlink_to(disk)
    with ServerProcess(tmp_path / "srv", pki, disks=[str(disk)]) as srv:
        api = srv.session()
        step_id = create(srv, api, "hash", {"disk": str(link), "of": "file", "format": "raw", "algorithms": ["md5"]})
        swap = tmp_path / "swap.img"
        swap.symlink_to(secret)
        os.replace(swap, link)                          # atomic: the name never dangles
        doc = wait_terminal(srv, api, step_id)
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["result"]["facts"]["hashes"]["md5"] == md5(disk) != md5(secret)
    assert doc["result"]["facts"]["disk"] == str(disk.resolve())
    assert doc["params"]["disk"] == str(link)           # the document keeps what the connector asked for


def test_a_disk_file_replaced_after_the_202_fails_the_step_unread(tmp_path, pki):
    """The attached path itself is renamed over right after the 202: it names another file (device/inode) than the
    one checked at submit, so the step fails with disk_replaced before reading anything."""
    disk, secret = tmp_path / "disk.img", tmp_path / "secret.img"
    disk.write_bytes(os.urandom(MiB))
    secret.write_bytes(os.urandom(MiB))
    secret_md5 = md5(secret)
    with ServerProcess(tmp_path / "srv", pki, disks=[str(disk)]) as srv:
        api = srv.session()
        step_id = create(srv, api, "hash", {"disk": str(disk), "of": "file", "format": "raw", "algorithms": ["md5"]})
        os.replace(secret, disk)
        doc = wait_terminal(srv, api, step_id)
        lines = api.get(f"{srv.url}/v1/steps/{step_id}/log", timeout=10).json()["lines"]
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == "disk_replaced", doc["error"]
    assert "params.disk" in doc["error"]["message"] and str(disk) in doc["error"]["message"]
    assert doc["result"] is None
    assert secret_md5 not in repr(doc) + repr(lines)


# ---------------------------------------------------------------- item 7: orphans of a killed service

def test_a_restarted_service_stops_the_orphaned_step_before_it_runs_another_on_its_disk(tmp_path, pki):
    """A step deaf to SIGTERM holds a disk; the whole gunicorn is killed with -9, its step process lives on. The
    next service on the same state_dir kills it before answering: once it answers, the orphan and its process
    group are gone, and a new step on the disk runs without it."""
    disk, pidfile = tmp_path / "disk.img", tmp_path / "hold.pid"
    disk.write_bytes(b"\0" * MiB)
    srv = ServerProcess(tmp_path / "srv", pki, disks=[str(disk)], env=EXTRA_STEPS)
    orphan = None
    try:
        srv.start()
        held = create(srv, srv.session(), "test-hold", {"disk": str(disk), "pidfile": str(pidfile)})
        orphan = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), 30, "the step to hold the disk"))
        srv.kill()                                      # master and worker: no shutdown hook runs
        assert alive(orphan)
        srv.start()
        assert not alive(orphan), "the service answers while the previous service's step still runs"
        assert group_members(orphan) == []
        api = srv.session()
        doc = api.get(f"{srv.url}/v1/steps/{held}", timeout=10).json()
        assert doc["status"] == "failed" and doc["error"]["code"] == "interrupted"
        probe = wait_terminal(srv, api, create(srv, api, "test-probe", {"disk": str(disk), "watch": orphan}))
        assert probe["status"] == "succeeded", probe["error"]
        assert probe["result"]["facts"]["watched_alive"] is False
        assert f"stopping the processes the restart left of step {held}" in srv.log_text()
    finally:
        srv.stop()
        if orphan:
            kill_all([orphan])


def test_a_restarted_service_stops_what_a_killed_step_process_left_in_its_group(tmp_path, pki):
    """The service and its step process both die by SIGKILL (an OOM kill): the step's `sleep`s live on in its
    process group, leaderless. The next service finds them by the step id in their environment and stops them
    before it answers."""
    marker = f"{900 + uuid.uuid4().int % 99}.{uuid.uuid4().int % 97}"
    pidfile = tmp_path / "sleep.pid"
    srv = ServerProcess(tmp_path / "srv", pki)
    try:
        srv.start()
        create(srv, srv.session(), "test-sleep", {"marker": marker, "pidfile": str(pidfile)})
        sleeps = wait_until(lambda: len(found := processes_with(f"sleep {marker}")) >= 2 and found, 30,
                            "the step's two sleeps")
        worker = int(pidfile.read_text())
        os.kill(worker, signal.SIGSTOP)                 # it must not see its service go and clean up by itself
        srv.kill()
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: not alive(worker), 10, "the step process to die")
        assert all(alive(pid) for pid in sleeps)
        srv.start()
        assert processes_with(f"sleep {marker}") == [], "the service answers while the step's processes live"
    finally:
        srv.stop()
        kill_all(processes_with(f"sleep {marker}"))


def test_a_step_process_whose_service_died_takes_its_process_group_with_it(tmp_path, pki):
    """Its service killed, a step process unwinds its step (the `sleep`s' shell is killed) and ends; the `sleep`s
    the shell started -- still in its process group, which nobody reaps now -- end with it."""
    marker = f"{800 + uuid.uuid4().int % 99}.{uuid.uuid4().int % 97}"
    pidfile = tmp_path / "sleep.pid"
    srv = ServerProcess(tmp_path / "srv", pki)
    try:
        srv.start()
        create(srv, srv.session(), "test-sleep", {"marker": marker, "pidfile": str(pidfile)})
        wait_until(lambda: len(processes_with(f"sleep {marker}")) >= 2, 30, "the step's two sleeps")
        worker = int(pidfile.read_text())
        srv.kill()
        wait_until(lambda: not alive(worker), 30, "the step process to end after its service")
        time.sleep(0.5)
        assert processes_with(f"sleep {marker}") == [], "the step's processes outlive it"
    finally:
        srv.stop()
        kill_all(processes_with(f"sleep {marker}"))


# ---------------------------------------------------------------- item 8: the state is the service's alone

def modes(directory: Path) -> dict[str, int]:
    return {".": stat.S_IMODE(directory.stat().st_mode),
            **{p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}}


def test_the_state_is_private_whatever_the_umask(tmp_path, pki):
    """Under umask 022 a state_dir and a database from an older service (0755 / 0644, without the column that
    records step processes) are tightened to 0700 / 0600, the -wal and -shm files SQLite creates are 0600, and so
    is all of it again after files were widened behind the service's back and it restarted."""
    state = tmp_path / "state"
    old_umask = os.umask(0o022)
    srv = ServerProcess(tmp_path / "srv", pki, state_dir=state, env=EXTRA_STEPS)
    try:
        state.mkdir()
        with sqlite3.connect(state / "ce.sqlite") as db:        # the schema before steps recorded their process
            db.executescript(SCHEMA.replace(",\n    worker TEXT", ""))
        db.close()
        assert modes(state) == {".": 0o755, "ce.sqlite": 0o644}
        srv.start()
        api = srv.session()
        assert wait_terminal(srv, api, create(srv, api, "test-wait", {"seconds": 0.1}))["status"] == "succeeded"
        assert modes(state) == {".": 0o700, "ce.sqlite": 0o600, "ce.sqlite-wal": 0o600, "ce.sqlite-shm": 0o600}
        srv.kill()                                      # the -wal and -shm stay
        for path in state.iterdir():
            path.chmod(0o644)
        state.chmod(0o755)
        srv.start()
        assert modes(state) == {".": 0o700, "ce.sqlite": 0o600, "ce.sqlite-wal": 0o600, "ce.sqlite-shm": 0o600}
        api = srv.session()
        step_id = create(srv, api, "test-wait", {"seconds": 0.1})
        assert wait_terminal(srv, api, step_id)["status"] == "succeeded"
    finally:
        os.umask(old_umask)
        srv.stop()


def test_a_shared_sticky_directory_is_refused_as_state_dir(tmp_path):
    """A state_dir like /tmp (world-writable, sticky) is not the service's to close to 0700, and anyone could plant
    files under the names SQLite opens there: the store refuses it, and leaves its mode alone."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(BootstrapInvalid, match="shared directory"):
        Store(shared / "ce.sqlite")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert list(shared.iterdir()) == []
