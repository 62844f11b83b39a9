"""bench/wanproxy.py, the delay proxy the WAN bench puts in front of smbd: bytes intact both ways, half-closes
forwarded, every byte delayed at least the configured time each way (delivery pipelined, not one message per
delay), a clean stop, and a target that fails is a closed connection. Real sockets on 127.0.0.1, no smbd."""
from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from bench.wanproxy import DelayProxy

DELAY = 0.05


class Target:
    """A TCP server on 127.0.0.1 running ``handle(connection)`` for each client, on a thread."""

    def __init__(self, handle):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.handle = handle
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            try:
                self.handle(connection)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def echo(connection: socket.socket) -> None:
    while data := connection.recv(1 << 16):
        connection.sendall(data)


def digest_then_echo(connection: socket.socket) -> None:
    """Reads until the client half-closes, then answers with the digest of it all and the bytes themselves."""
    data = read_to_end(connection)
    connection.sendall(hashlib.sha256(data).digest() + data)


@pytest.fixture
def target(request):
    server = Target(request.param)
    yield server
    server.close()


@pytest.mark.parametrize("target", [digest_then_echo], indirect=True)
def test_bytes_cross_intact_both_ways_and_a_half_close_is_forwarded(target):
    sent = os.urandom(6 << 20) + bytes(1 << 20) + os.urandom(12345)
    with DelayProxy(target.address, 0.005) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.sendall(sent)
        client.shutdown(socket.SHUT_WR)   # the target answers only once it has seen the end of what was sent
        answer = read_to_end(client)      # ... and the client still receives after its own half-close
    assert answer[:32] == hashlib.sha256(sent).digest()
    assert answer[32:] == sent


@pytest.mark.parametrize("target", [echo], indirect=True)
def test_each_way_is_delayed_at_least_the_configured_time(target):
    with DelayProxy(target.address, DELAY) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as client:
        for _ in range(5):
            started = time.monotonic()
            client.sendall(b"ping")
            assert client.recv(16) == b"ping"
            assert time.monotonic() - started >= 2 * DELAY


@pytest.mark.parametrize("target", [echo], indirect=True)
def test_messages_in_flight_are_delayed_together_not_one_after_another(target):
    """20 messages sent 10 ms apart all come back about one round trip after they left: one delay after another
    (a serialized link) would take at least 20 delays for the last."""
    count = 20
    with DelayProxy(target.address, DELAY) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)     # Nagle would merge the messages
        client.sendall(b"x")
        assert client.recv(1) == b"x"                    # connected through to the target
        started = time.monotonic()
        for _ in range(count):
            client.sendall(b"y")
            time.sleep(0.01)                             # each its own read in the proxy
        received = b""
        while len(received) < count:
            received += client.recv(count)
        elapsed = time.monotonic() - started
    assert received == b"y" * count
    assert 2 * DELAY <= elapsed < count * DELAY


@pytest.mark.parametrize("target", [echo], indirect=True)
def test_stop_closes_open_connections_and_the_port(target):
    proxy = DelayProxy(target.address, DELAY).start()
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(b"hello")
    assert client.recv(16) == b"hello"
    client.sendall(b"still waiting in the proxy")
    proxy.stop()
    client.settimeout(10)
    try:
        assert client.recv(64) == b""                   # closed, never delivered after the stop
    except ConnectionResetError:
        pass
    client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)


def test_a_target_that_refuses_closes_the_client_connection():
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        closed_port = placeholder.getsockname()[1]
    with DelayProxy(("127.0.0.1", closed_port), DELAY) as proxy, \
            socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.settimeout(10)
        try:
            client.sendall(b"anyone there?")
            assert client.recv(64) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass


@pytest.mark.parametrize("target", [lambda connection: connection.recv(4)], indirect=True)
def test_a_target_that_hangs_up_closes_the_client_connection(target):
    with DelayProxy(target.address, 0.005) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.settimeout(10)
        client.sendall(b"bye!")
        try:
            assert client.recv(64) == b""
        except ConnectionResetError:
            pass
