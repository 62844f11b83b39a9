"""Deadlines for slow clients: a TLS connection that does not finish its handshake, or its request, in time is
dropped instead of holding one of gunicorn's worker threads.

gunicorn's gthread worker hands a connection to a thread as soon as its first bytes arrive and the thread then
blocks in the TLS handshake and the request parser without any time limit, so a few dozen clients that send a
partial ClientHello, or headers a byte at a time, take every thread and the connector's polls wait forever
(tests/faults/test_faults_requests.py). A socket timeout alone does not help against a client that trickles one byte
per timeout, so both are *total* deadlines: the handshake from its start, a request from the moment a thread takes
the connection. Reaching one looks to gunicorn like the client going away (it closes the connection quietly).
"""
from __future__ import annotations

import logging
import os
import select
import ssl
import time

log = logging.getLogger("ce.server")


def _seconds(name: str, default: float) -> float:
    """A deadline, shortened by tests and benches through the environment (CE_SERVE_HANDSHAKE_SECONDS, ...)."""
    return float(os.environ.get(name, default))


# A connector on the same network needs milliseconds; the margin is for a CE whose CPUs are busy (200 pollers
# connecting at once to a 2-CPU machine under load took over 5 s for a few handshakes).
HANDSHAKE_SECONDS = _seconds("CE_SERVE_HANDSHAKE_SECONDS", 20.0)
REQUEST_SECONDS = _seconds("CE_SERVE_REQUEST_SECONDS", 30.0)   # request line, headers and a body of at most 1 MiB
SEND_SECONDS = _seconds("CE_SERVE_SEND_SECONDS", 30.0)         # each write of a response to a client that reads slowly


class HandshakeTimeout(ssl.SSLError):
    """Raised as an unexpected EOF, which gunicorn treats as a client that went away."""


class DeadlineSocket(ssl.SSLSocket):
    """The server's TLS sockets (``context.sslsocket_class``), with the deadlines above."""

    _deadline: float | None = None

    def do_handshake(self, block: bool = False) -> None:
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        timeout = self.gettimeout()
        self.settimeout(0.0)
        try:
            while True:
                try:
                    super().do_handshake()
                    break
                except ssl.SSLWantReadError:
                    waiting = ([self], [])
                except ssl.SSLWantWriteError:
                    waiting = ([], [self])
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not any(select.select(*waiting, [], remaining)[:2]):
                    log.info("dropped a client whose TLS handshake took longer than %g s", HANDSHAKE_SECONDS,
                             extra={"peer": _peer(self)})
                    raise HandshakeTimeout(ssl.SSL_ERROR_EOF, "the TLS handshake did not finish in time")
        finally:
            self.settimeout(timeout)
        self._deadline = time.monotonic() + REQUEST_SECONDS

    def setblocking(self, flag: bool) -> None:
        """gunicorn makes the socket blocking when a thread takes the connection (a new request begins) and
        non-blocking when it goes back to the keep-alive poller."""
        super().setblocking(flag)
        self._deadline = time.monotonic() + REQUEST_SECONDS if flag else None

    def read(self, len: int = 1024, buffer=None):          # noqa: A002 (the name ssl.SSLSocket uses)
        if self._deadline is not None and self.gettimeout() != 0.0:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                log.info("dropped a client that took longer than %g s to send its request", REQUEST_SECONDS,
                         extra={"peer": _peer(self)})
                self._deadline = None
                return 0 if buffer is not None else b""         # end of file: the parser stops quietly
            self.settimeout(remaining)
            try:
                return super().read(len, buffer)
            except TimeoutError:
                return self.read(len, buffer)                    # the deadline passed while waiting
        return super().read(len, buffer)

    def send(self, data, flags: int = 0) -> int:
        if self.gettimeout() != 0.0:
            self.settimeout(SEND_SECONDS)
        return super().send(data, flags)


def _peer(sock: ssl.SSLSocket) -> str | None:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return None
