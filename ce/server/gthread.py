"""The server's gunicorn worker: gthread, except that a connection that ends is closed by the thread that served it,
never by the event loop (issue 16, item 2).

gunicorn's gthread worker (27.0.1) has one event loop that accepts connections, hands readable ones to the thread
pool and takes them back when a thread is done (``finish_request``). For a connection that is not kept alive,
``finish_request`` closes it *gracefully* on that loop: ``util.close_graceful`` shuts down the write side, then reads
and discards what the client still sends until it stops or 2 s have passed, so that unread request bytes do not turn
the close into a reset that would cut off the response. A client that keeps sending -- bytes that are not TLS, whose
handshake fails at once, or a request trickled past ce/server/slowclients.py's deadline -- holds the loop those
whole 2 s, and every other connection waits: a kept-alive poll needs the loop twice (to reach a thread, and to be
kept alive again), so ten such clients made every poll take 5.5-6 s and ten dropped at once one poll 19.7 s.

``CeThreadWorker.handle`` does that graceful close itself, in the request thread, after gunicorn's ``handle`` returns
"close"; the thread's later ``finish_request`` on the loop only counts the connection as gone. The drain keeps its
2 s bound and now costs one of the 64 threads, like the slow client's request did before it was dropped. The stock
worker also counted a connection twice when a TLS peer went away (``handle`` had closed the socket, the graceful
close then failed and the error path counted it again); here it is counted once.

This relies on ThreadWorker internals (``handle`` and ``finish_request`` with their signatures, ``_DEFER``,
``util.close_graceful``): pyproject.toml pins gunicorn to the version tested and ``check()`` refuses to start on a
gunicorn that lacks them.
"""
from __future__ import annotations

import inspect
import logging

import gunicorn
from gunicorn import util
from gunicorn.workers import gthread as stock

from ..errors import CeError

log = logging.getLogger("ce.server")

TESTED = "27.0.1"                  # the gunicorn version this worker was written against (pyproject.toml pins it)
WORKER_CLASS = f"{__name__}.CeThreadWorker"
STOCK_WORKER_CLASS = "gthread"     # only for measuring what this worker buys (bench/slowclients.py)
DRAIN_SECONDS = 2.0                # as gunicorn's close_graceful: how long a closing connection is drained


def close_gracefully(conn) -> None:
    """gunicorn's graceful close of ``conn`` (bounded by DRAIN_SECONDS), in the calling thread; never raises."""
    sock = conn.sock
    try:
        if sock.fileno() == -1:            # closed already (handle's path for a TLS peer that went away)
            return
        sock.setblocking(True)
        util.close_graceful(sock, timeout=DRAIN_SECONDS)
    except Exception:                      # noqa: BLE001 -- a socket that cannot be drained is closed outright
        util.close(sock)
    finally:
        conn.ce_closed = True


class CeThreadWorker(stock.ThreadWorker):
    """gunicorn's gthread worker whose event loop never waits on a client (see the module's docstring)."""

    def handle(self, conn):
        """Runs in a request thread: gunicorn's handling, then the graceful close when it says "close"."""
        result = super().handle(conn)
        if result is stock._DEFER or result:
            return result                  # back to the loop: kept alive, or waiting for its first bytes
        close_gracefully(conn)
        return False

    def finish_request(self, conn, fs):
        """Runs on the event loop; must not block."""
        if getattr(conn, "ce_closed", False):
            self.nr_conns -= 1
            return
        if fs.cancelled() or fs.exception() is not None:
            # handle did not return (the pool shut down, or it raised): close without draining
            self.nr_conns -= 1
            util.close(conn.sock)
            return
        super().finish_request(conn, fs)   # kept alive or deferred: the stock bookkeeping, which does not block


def check(base: type = stock.ThreadWorker) -> None:
    """Refuse to serve on a gunicorn whose gthread worker (``base``) lacks what CeThreadWorker overrides or uses."""
    problems = []
    for name, params in (("handle", ["self", "conn"]), ("finish_request", ["self", "conn", "fs"])):
        method = getattr(base, name, None)
        if not callable(method) or list(inspect.signature(method).parameters) != params:
            problems.append(f"ThreadWorker.{name}({', '.join(params[1:])})")
    if not hasattr(stock, "_DEFER"):
        problems.append("gunicorn.workers.gthread._DEFER")
    close_graceful = getattr(util, "close_graceful", None)
    if not callable(close_graceful) or "timeout" not in inspect.signature(close_graceful).parameters:
        problems.append("gunicorn.util.close_graceful(sock, timeout)")
    if problems:
        raise CeError(f"ce serve cannot run on gunicorn {gunicorn.__version__}: its gthread worker lacks "
                      f"{', '.join(problems)}, which ce's worker (ce/server/gthread.py) relies on; install the "
                      f"gunicorn version pyproject.toml pins ({TESTED})")
    if gunicorn.__version__ != TESTED:
        log.warning("gunicorn %s is not the version ce's worker was tested with (%s, pinned in pyproject.toml)",
                    gunicorn.__version__, TESTED)
