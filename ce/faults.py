"""Fault injection for the crash-safety suite (tests/faults/test_faults_prepare.py); inert unless its variables
are set.

``CE_FAULT_TRACE=FILE`` appends one line per libguestfs call ("<n> <call>") and phase marks ("# apply") to FILE,
so a test can see how many calls a clean run makes and where each phase starts. ``CE_FAULT_KILL_AT=N`` kills this
process group with SIGKILL just before the Nth call -- the CE VM losing power at that exact point, since the
appliance's qemu dies with it. ``CE_FAULT_KILL_PHASE=NAME`` does the same at ``checkpoint(NAME)``, for phases
that make no libguestfs call (a differencing child being written, or renamed on the share).
"""
from __future__ import annotations

import os
import signal

KILL_ENV, TRACE_ENV, PHASE_ENV = "CE_FAULT_KILL_AT", "CE_FAULT_TRACE", "CE_FAULT_KILL_PHASE"


class CountingHandle:
    """Proxies a guestfs handle, counting calls."""

    def __init__(self, g, kill_at: int | None, trace: str | None):
        self._g, self._kill_at, self._trace, self._n = g, kill_at, trace, 0

    def __getattr__(self, name: str):
        attr = getattr(self._g, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self._n += 1
            note(f"{self._n} {name}")
            if self._n == self._kill_at:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            return attr(*args, **kwargs)
        return call


def instrument(g):
    if not (os.environ.get(KILL_ENV) or os.environ.get(TRACE_ENV)):
        return g
    kill_at = os.environ.get(KILL_ENV)
    return CountingHandle(g, int(kill_at) if kill_at else None, os.environ.get(TRACE_ENV))


def note(line: str) -> None:
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a") as f:
            f.write(line + "\n")


def checkpoint(name: str) -> None:
    """A named point of a phase without libguestfs calls: noted in the trace, killed at when asked."""
    note(f"# {name}")
    if os.environ.get(PHASE_ENV) == name:
        os.killpg(os.getpgrp(), signal.SIGKILL)
