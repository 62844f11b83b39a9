"""The libguestfs appliance's host side: which accelerator it runs under, and a watchdog that kills it.

``choose_accel`` picks KVM when a test boot proves it works (nested KVM is often broken) and TCG otherwise,
probed once per machine and cached. ``deadline`` bounds a blocking libguestfs call in time by killing the
appliance's qemu, which makes the call fail; ``ce.guest.Guest`` uses both.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import GuestError, GuestTimeout

log = logging.getLogger(__name__)

ACCEL_ENV = "CE_GUEST_ACCEL"          # auto (default) | kvm | tcg
KILL_POLL = 0.2                        # seconds between kills of an appliance whose deadline has passed
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ce"


# ---------------------------------------------------------------- acceleration

def kvm_probe() -> tuple[bool, str]:
    """Boot the host kernel under KVM until it panics (no root fs). Broken nested KVM aborts or hangs instead."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        return False, "no kernel in /boot to probe KVM with"
    cmd = ["qemu-system-x86_64", "-machine", "accel=kvm", "-cpu", "host", "-m", "256", "-nodefaults",
           "-display", "none", "-no-reboot", "-serial", "null", "-kernel", str(kernels[-1]),
           "-append", "panic=-1 console=ttyS0"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, "a KVM test boot hung"
    except FileNotFoundError:
        return False, "qemu-system-x86_64 is not installed"
    if proc.returncode != 0:
        return False, f"a KVM test boot failed: {proc.stderr.decode(errors='replace').strip()[-200:]}"
    return True, "KVM works"


def choose_accel() -> str:
    """``kvm`` or ``tcg``: forced by $CE_GUEST_ACCEL, else probed once per machine and cached."""
    forced = os.environ.get(ACCEL_ENV, "auto").lower()
    if forced in ("kvm", "tcg"):
        return forced
    if forced != "auto":
        raise GuestError(f"{ACCEL_ENV} must be auto, kvm or tcg, not {forced!r}")
    cache = CACHE_DIR / "accel.json"
    fingerprint = f"{os.uname().release}|{sorted(Path('/boot').glob('vmlinuz-*'))}"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("fingerprint") == fingerprint:
            return cached["accel"]
    except (OSError, ValueError, KeyError):
        pass
    ok, why = kvm_probe()
    accel = "kvm" if ok else "tcg"
    log.info("guest acceleration: %s (%s)", accel, why)
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"fingerprint": fingerprint, "accel": accel, "reason": why}))
    except OSError:
        pass
    return accel


# ---------------------------------------------------------------- watchdog

def qemu_children() -> set[int]:
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
        except OSError:
            continue
        comm, _, tail = rest.rpartition(") ")
        if comm.startswith("(qemu") and int(tail.split()[1]) == os.getpid():
            pids.add(int(pid))
    return pids


@contextmanager
def deadline(seconds: float, what: str, appliance_pids):
    """Kill the appliance (``appliance_pids()``) if ``what`` takes longer than ``seconds``; the blocked libguestfs
    call then fails and is reported as a timeout. Once the deadline has passed, an appliance that appears later is
    killed too: on a loaded host libguestfs may not have started qemu yet when the deadline comes (it builds the
    appliance first), and a single kill then found nothing and let the launch run on past it."""
    fired, over = threading.Event(), threading.Event()

    def kill():
        fired.set()
        while not over.is_set():
            for pid in appliance_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            over.wait(KILL_POLL)

    timer = threading.Timer(seconds, kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    except RuntimeError as exc:
        if fired.is_set():
            raise GuestTimeout(f"{what} did not finish within {seconds:.0f} s and was stopped; "
                               f"raise the step timeout or check the host's load") from exc
        raise
    finally:
        over.set()
        timer.cancel()
