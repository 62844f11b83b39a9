"""A throwaway Samba ``smbd`` on 127.0.0.1 for tests: its own config, state dirs and port, no system changes.

The SMB login ``ceuser`` is mapped to the Unix user root through ``username map``, so no Unix account is created
(smbpasswd only accepts existing Unix users). Samba writes nothing outside ``root`` (reference/feasibility.md
section 1). ``file_size_limit`` starts smbd with RLIMIT_FSIZE set and SIGXFSZ ignored, so writes past the limit fail
with EFBIG, which Samba reports as STATUS_DISK_FULL: the only way to fill a share here, where nothing can be mounted.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

USER = "ceuser"
PASSWORD = "Ce-Test-Pass-9f3k"
STATE_DIRS = ("private", "lock", "state", "cache", "pid", "log", "ncalrpc")
SMBD = shutil.which("smbd") or "/usr/sbin/smbd"
PR_SET_PDEATHSIG = 1
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

GLOBAL_CONF = """\
[global]
  workgroup = CETEST
  server role = standalone server
  interfaces = lo
  bind interfaces only = yes
  smb ports = {port}
  disable netbios = yes
  private dir = {root}/private
  lock directory = {root}/lock
  state directory = {root}/state
  cache directory = {root}/cache
  pid directory = {root}/pid
  ncalrpc dir = {root}/ncalrpc
  log file = {root}/log/log.%m
  passdb backend = tdbsam:{root}/private/passdb.tdb
  username map = {root}/usermap.txt
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2_10
"""

SHARE_CONF = """\
[{name}]
  path = {path}
  read only = no
  valid users = root
  force user = root
"""


def tiny_share(root: Path, total: int, free: int) -> dict[str, str]:
    """Share options under which Samba reports ``total`` / ``free`` bytes (a ``dfree command``, 1 KiB blocks)."""
    script = root / f"dfree-{total}-{free}"
    script.write_text(f"#!/bin/sh\necho {total // 1024} {free // 1024}\n")
    script.chmod(0o755)
    return {"dfree command": str(script)}


def fresh_folder(server: "SambaServer", test_name: str, share: str = "share") -> Path:
    """A new folder on the share for one test; parametrized ids ("trailing." and "trailing ") never collide."""
    unique = f"{re.sub(r'[^A-Za-z0-9_-]', '_', test_name)[:60]}-{hashlib.sha1(test_name.encode()).hexdigest()[:6]}"
    path = server.share_dir(share) / unique
    path.mkdir()
    return path


@dataclass
class SambaServer:
    root: Path
    shares: dict[str, dict[str, str]] = field(default_factory=lambda: {"share": {}})
    file_size_limit: int | None = None
    password: str = PASSWORD
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen | None = None

    def share_dir(self, name: str) -> Path:
        return self.root / "shares" / name

    def unc(self, share: str, folder: str = "") -> str:
        return f"\\\\{self.host}\\{share}" + (f"\\{folder}" if folder else "")

    def location(self, share: str = "share", folder: str = "", password: str = PASSWORD, user: str = USER) -> dict:
        """A step's storage location params for ``folder`` on ``share`` of this smbd."""
        return {"Location": self.unc(share, folder), "port": self.port,
                "credentials": {"username": user, "password": password}}

    def start(self) -> "SambaServer":
        if not os.access(SMBD, os.X_OK):
            raise RuntimeError("smbd is not installed: apt-get install samba smbclient (make setup does it)")
        self.port = free_port(self.host)
        self._write_config()
        self._add_user()
        log = open(self.root / "log" / "smbd.out", "wb")
        self.proc = subprocess.Popen(
            [SMBD, "-s", str(self.conf), "--foreground", "--no-process-group", "--debug-stdout", "-d", "1"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=self._prepare_child)
        log.close()
        self._wait_until_listening()
        return self

    def stop(self) -> None:
        """SIGTERM the parent (it stops its children), then kill whatever is left in its process group."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None

    def __enter__(self) -> "SambaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def conf(self) -> Path:
        return self.root / "smb.conf"

    def _write_config(self) -> None:
        # A recreated passdb with stale SID->uid caches fails logons: always start from empty state dirs.
        for name in STATE_DIRS:
            shutil.rmtree(self.root / name, ignore_errors=True)
            (self.root / name).mkdir(parents=True)
        text = GLOBAL_CONF.format(root=self.root, port=self.port)
        for name, options in self.shares.items():
            self.share_dir(name).mkdir(parents=True, exist_ok=True)
            text += SHARE_CONF.format(name=name, path=self.share_dir(name))
            text += "".join(f"  {key} = {value}\n" for key, value in options.items())
        self.conf.write_text(text)
        (self.root / "usermap.txt").write_text(f"root = {USER}\n")

    def _add_user(self) -> None:
        subprocess.run(["smbpasswd", "-c", str(self.conf), "-s", "-a", "root"],
                       input=f"{self.password}\n{self.password}\n", text=True, check=True, capture_output=True)

    def _prepare_child(self) -> None:
        """Runs in the forked child before exec: smbd gets SIGTERM if the test process dies without teardown."""
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if self.file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_size_limit, self.file_size_limit))

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        exit_code, tail = self.proc.poll(), self._log_tail()
        self.stop()
        raise RuntimeError(f"smbd did not listen on {self.host}:{self.port} within {START_TIMEOUT} s "
                           f"(exit code {exit_code}): {tail}")

    def _log_tail(self) -> str:
        return (self.root / "log" / "smbd.out").read_text(errors="replace")[-2000:]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
