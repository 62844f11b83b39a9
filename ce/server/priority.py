"""The data path before the status polls: request threads run at a lower CPU priority than steps.

A CE exists to move and rewrite disks; hundreds of connectors polling a step must not slow the export they poll.
Once the gunicorn worker has loaded the app, its main thread -- and so every request thread it creates later --
takes nice ``REQUEST_NICE``. Steps keep the service's own priority: their processes are started from threads the
:class:`Launcher` creates, and it was created (with the app) before the worker lowered itself. An unprivileged
service (``User=ce``) could raise a child's nice value but never lower it back, hence the launcher rather than a
reset in the child. Polls still get their share whenever the CPUs are busy (nice 10 weighs about a tenth of nice
0), and all the idle time a step leaves while it waits on a share or a disk.
"""
from __future__ import annotations

import logging
import os
import queue
import threading

log = logging.getLogger("ce.server")

REQUEST_NICE = 10


def thread_nice(tid: int | None = None) -> int:
    """The nice value of one thread (this one by default); Linux keeps it per thread."""
    return os.getpriority(os.PRIO_PROCESS, tid or threading.get_native_id())


def lower_this_thread(nice: int = REQUEST_NICE) -> None:
    """This thread, and the threads it creates from now on, at ``nice`` (never raised back: only lowered)."""
    tid = threading.get_native_id()
    try:
        if thread_nice(tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.warning("request threads keep the steps' CPU priority: setpriority failed: %s", exc.strerror)


class Launcher:
    """Starts threads from one long-lived thread, so they get *its* priority rather than their requester's."""

    def __init__(self):
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, daemon=True, name="launcher").start()

    def start(self, target, args: tuple = (), name: str | None = None) -> None:
        self._requests.put((target, args, name))

    def _serve(self) -> None:
        while True:
            target, args, name = self._requests.get()
            threading.Thread(target=target, args=args, daemon=True, name=name).start()
