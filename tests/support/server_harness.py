"""A real step server for tests and the bench: generated certificates, a bootstrap file, `ce serve` (gunicorn) on
127.0.0.1, clients with and without the right certificate -- plus the test-only step types it serves.

The test-only step types are this module's ``STEPS``, which the server and its step processes serve because
``CE_EXTRA_STEP_MODULES=tests.support.server_harness``; importing this module registers nothing, and nothing under
``steps/`` is fake.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from pydantic import SecretStr

from ce.client import Client
from ce.changes import Plan, Result
from ce.errors import Canceled
from ce.step import StepContext, StepParams, StepType
from ce.tls import OutboundPolicy, outbound_session
from tests.support import ROOT
from tests.support.certs import Authority

CE = Path(sys.executable).with_name("ce")


# ---------------------------------------------------------------- test-only step types

class WaitParams(StepParams):
    seconds: float = 30.0                  # how long the step works before it succeeds
    timeout: int | None = None
    disk: str | None = None                # an attached disk to lock (never opened)
    output: str | None = None              # written as OUTPUT.partial while working, renamed when done
    pidfile: str | None = None             # the step writes its pid here
    password: SecretStr | None = None      # logged by the step, to prove redaction


def run_wait(params: WaitParams, plan: Plan, ctx: StepContext) -> Result:
    """Works in 0.1 s slices, honours cancel between slices and removes its .partial file when canceled."""
    if params.pidfile:
        Path(params.pidfile).write_text(str(os.getpid()))
    if params.password:
        ctx.log.info("connecting with password %s", params.password.get_secret_value())
    partial = Path(params.output + ".partial") if params.output else None
    if partial:
        partial.write_text("work in progress")
    ctx.warn("test_warning", "a warning from the test step")
    end = time.monotonic() + params.seconds
    while time.monotonic() < end:
        if ctx.canceled():
            if partial:
                partial.unlink()
            ctx.log.info("canceled: removed %s", partial)
            raise Canceled("the step was canceled")
        left = max(0.0, end - time.monotonic())
        ctx.progress(100 * (1 - left / params.seconds) if params.seconds else 100, f"{left:.1f} s left")
        time.sleep(min(0.1, left))
    if partial:
        partial.rename(params.output)
    return Result.of(plan, facts={"slept": params.seconds})


class SleepParams(StepParams):
    marker: str                            # a unique sleep duration, to find the processes afterwards
    timeout: int | None = None
    pidfile: str | None = None


def run_sleep(params: SleepParams, plan: Plan, ctx: StepContext) -> Result:
    """Ignores cancel: blocks on a shell that runs two `sleep`s (one in the background) -- only killing the
    process group stops it."""
    if params.pidfile:
        Path(params.pidfile).write_text(str(os.getpid()))
    subprocess.run(["sh", "-c", f"echo 'sleeping {params.marker}' >&2; sleep {params.marker} & "
                    f"sleep {params.marker}; wait"], check=False)
    return Result.of(plan, facts={"slept": True})


def plan_nothing(params, ctx: StepContext) -> Plan:
    return Plan(step="test")


STEPS = (StepType(name="test-wait", summary="TEST ONLY: wait, honouring cancel", Params=WaitParams,
                  plan=plan_nothing, apply=run_wait, disk_params=("disk",)),
         StepType(name="test-sleep", summary="TEST ONLY: block in a child process, ignoring cancel",
                  Params=SleepParams, plan=plan_nothing, apply=run_sleep))


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def processes_with(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid = int(cmdline.parent.name)
        if text in args and pid != os.getpid() and alive(pid):
            found.append(pid)
    return found


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class CallbackReceiver:
    """The connector's callback endpoint: HTTPS with ``cert`` (pinned by the server), records every POST -- the raw
    ``bodies``, the parsed ``received`` JSON and the ``headers``; the first ``fail_first`` answers are 503. With
    ``redirect_to`` every answer is a 307 to that URL (a hostile or misconfigured endpoint); with ``cert=None`` it
    is plain HTTP."""

    def __init__(self, cert, fail_first: int = 0, redirect_to: str | None = None):
        self.cert, self.fail_first, self.redirect_to = cert, fail_first, redirect_to
        self.attempts, self.bodies, self.received, self.headers = 0, [], [], []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.attempts += 1
                receiver.bodies.append(body)
                if receiver.redirect_to:
                    self.send_response(307)
                    self.send_header("Location", receiver.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver.received.append(json.loads(body))
                receiver.headers.append(dict(self.headers))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert.cert), str(cert.key))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.cert is not None else "http"
        return f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}/ce/steps"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Pki:
    """The job's CA (server and connector certificates) and an unrelated CA."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.ca = Authority(directory, "job-ca")
        self.server = self.ca.issue("server", "ce.test", server=True)
        self.client = self.ca.issue("client", "connector", server=False)
        self.other_ca = Authority(directory, "other-ca")
        self.stranger = self.other_ca.issue("stranger", "connector", server=False)


class ServerProcess:
    """`ce serve --bootstrap FILE` as a real process (gunicorn), with a fresh token and a port of its own."""

    def __init__(self, workdir: Path, pki: Pki, *, disks: list[str] | None = None, callback: dict | None = None,
                 extra_args: tuple[str, ...] = ("--cancel-grace", "3"), state_dir: Path | None = None,
                 verbose: bool = False, env: dict[str, str] | None = None, token: str | None = None,
                 bootstrap: dict | None = None):
        self.workdir, self.pki = workdir, pki
        self.port = free_port()
        self.token = token or secrets.token_urlsafe(32)
        self.env = env or {}                    # added to the server's environment (its step processes inherit it)
        self.bootstrap = workdir / "bootstrap.json"
        self.state_dir = state_dir or workdir / "state"
        doc = {"version": 1, "token": self.token, "listen": f"127.0.0.1:{self.port}",
               "tls": {"cert": str(pki.server.cert), "key": str(pki.server.key), "client_ca": str(pki.ca.cert_path)},
               "state_dir": str(self.state_dir), "disks": disks or [],
               "smb_ports": "any"}          # the test smbd listens on a port of its own, never 445
        if callback:
            doc["callback"] = callback
        for key, value in (bootstrap or {}).items():    # more fields, or (None) one of the above left out
            if value is None:
                doc.pop(key, None)
            else:
                doc[key] = value
        workdir.mkdir(parents=True, exist_ok=True)
        self.bootstrap.write_text(json.dumps(doc, indent=2))
        self.extra_args = extra_args
        self.verbose = verbose                  # -v: the access log (with each request's duration) at DEBUG
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "server.log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> "ServerProcess":
        env = {**os.environ, "CE_EXTRA_STEP_MODULES": "tests.support.server_harness",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "LIBGUESTFS_BACKEND": os.environ.get("LIBGUESTFS_BACKEND", "direct"), **self.env}
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(CE), *(["-v"] if self.verbose else []), "serve", "--bootstrap",
                                      str(self.bootstrap), *self.extra_args],
                                     stdout=self.log_file, stderr=self.log_file, env=env, cwd=ROOT,
                                     start_new_session=True)
        session = self.session()

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"ce serve exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                return session.get(self.url + "/v1/health", timeout=2).ok
            except requests.RequestException:
                return False
        wait_until(up, timeout, "the server to answer /v1/health")
        return self

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def kill(self) -> None:
        """SIGKILL the whole gunicorn (arbiter and worker): a crash, not a shutdown."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log_file", None):
            self.log_file.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def session(self, cert=None, token: str | None = "auto") -> requests.Session:
        """A requests session trusting the server; ``cert`` (cert, key) defaults to the connector's."""
        s = outbound_session(OutboundPolicy(ca=self.pki.ca.cert_path),
                             client_cert=cert if cert is not None else (str(self.pki.client.cert),
                                                                        str(self.pki.client.key)))
        if token:
            s.headers["Authorization"] = f"Bearer {self.token if token == 'auto' else token}"
        return s

    def client(self) -> Client:
        return Client.from_bootstrap(self.bootstrap, self.pki.client.cert, self.pki.client.key,
                                     ca=self.pki.ca.cert_path)
