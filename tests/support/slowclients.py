"""Hostile slow clients of the step server and a connector polling beside them (issue 16, item 2), shared by
tests/faults/test_faults_requests.py and bench/slowclients.py.

* ``plain`` clients send bytes that are not TLS (an HTTP request, a byte every ``interval`` seconds): the server's
  TLS handshake fails on the first five, and it drops them;
* ``certified`` clients finish the TLS handshake with the connector's certificate and then send a request a byte
  every ``interval`` seconds that never ends (a 64 KiB header): the server drops them when its request deadline
  passes (ce/server/slowclients.py).

Neither reads what the server sends nor notices the server's FIN: each keeps sending until the connection is reset
(as a careless or hostile client does), then connects again, until ``stop()``. ``polls`` is the connector's way of
polling: one keep-alive ``requests.Session`` asking ``GET /v1/health`` again and again.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import Counter

from tests.support.server_harness import ServerProcess


class SlowClients:
    def __init__(self, server: ServerProcess, plain: int = 10, certified: int = 10, interval: float = 0.1):
        self.server, self.interval = server, interval
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.connects: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()      # connections the server ended while the client still sent
        self.threads = [threading.Thread(target=self._run, args=(kind,), daemon=True, name=f"slow-{kind}-{i}")
                        for kind, count in (("plain", plain), ("certified", certified)) for i in range(count)]
        head = f"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token}\r\nX-Slow: "
        self.request = head.encode() + b"a" * 65536        # never finished: at 10 bytes/s it would take ~2 h

    def start(self) -> "SlowClients":
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        """Stops every client; waits ``timeout`` seconds in all for them (a client still connecting is left to its
        socket timeout: the threads are daemons)."""
        self.stopping.set()
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))

    def __enter__(self) -> "SlowClients":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _connect(self, kind: str) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.server.port), timeout=30)
        if kind == "plain":
            return raw
        ctx = ssl.create_default_context(cafile=str(self.server.pki.ca.cert_path))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(self.server.pki.client.cert), str(self.server.pki.client.key))
        try:
            return ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        except BaseException:
            raw.close()
            raise

    def _run(self, kind: str) -> None:
        while not self.stopping.is_set():
            try:
                with self._connect(kind) as sock:
                    with self.lock:
                        self.connects[kind] += 1
                    for i in range(len(self.request)):
                        if self.stopping.wait(self.interval):
                            return
                        sock.send(self.request[i:i + 1])
            except OSError:                    # reset by the server (or refused, or a failed handshake): again
                if self.stopping.is_set():
                    return
                with self.lock:
                    self.dropped[kind] += 1
                self.stopping.wait(self.interval)


def polls(server: ServerProcess, seconds: float, interval: float = 0.1) -> list[float]:
    """Seconds each ``GET /v1/health`` took, polled on one kept-alive connection for ``seconds`` (the connection is
    made and used once before timing starts). Every answer must be 200."""
    session, url = server.session(), server.url + "/v1/health"
    session.get(url, timeout=60).raise_for_status()
    took, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        response = session.get(url, timeout=120)
        took.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        time.sleep(interval)
    session.close()
    return took


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
