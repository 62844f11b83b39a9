"""A user-space TCP delay proxy: a WAN's round trip on 127.0.0.1, where the kernel has no netem.

    python bench/wanproxy.py --to 127.0.0.1:PORT --delay-ms 15 [--port 0]

Listens on 127.0.0.1 and forwards every connection to ``--to``; each byte is delivered ``--delay-ms`` after the
proxy received it, in each direction, so a round trip grows by twice the delay. Delivery is delayed, not
serialized: bytes that arrive while earlier ones wait queue behind them with their own due time, so the delay does
not cap the throughput -- the link is a long fat pipe with TCP window scaling, as a well-configured WAN path is.
At most QUEUE_LIMIT bytes wait per direction (then the proxy stops reading that side and TCP pushes back), which
bounds memory and is above the bandwidth-delay product of loopback at 50 ms. A half-close is forwarded once the
bytes before it are delivered; a reset or error on one side closes both.

Prints ``listening on 127.0.0.1:PORT`` when ready; SIGTERM or SIGINT stops it. In a program, ``DelayProxy`` runs it
on a thread of its own (the tests do); ``ProxyProcess`` runs it as a separate process, which a benchmark wants, so
that the proxy's work does not take the GIL from the client it measures.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import subprocess
import sys
import threading
from pathlib import Path

QUEUE_LIMIT = 64 << 20
HOST = "127.0.0.1"
EOF = None                     # queued after the last bytes of a direction whose sender half-closed


class Side(asyncio.Protocol):
    """One socket of a proxied connection: what it receives goes into ``outbound``; ``inbound`` writes to it."""

    def __init__(self, link: "Link"):
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.outbound: Direction | None = None
        self.inbound: Direction | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.outbound.push(data)

    def eof_received(self) -> bool:
        self.outbound.push(EOF)
        return True                     # keep the socket open: the other direction may still be sending

    def pause_writing(self) -> None:
        self.inbound.sink_paused = True
        self.inbound.throttle()

    def resume_writing(self) -> None:
        self.inbound.sink_paused = False
        self.inbound.throttle()

    def connection_lost(self, exc) -> None:
        self.link.lost(self)


class ClientSide(Side):
    """The accepted socket: what it sends before the target is connected waits in its direction's queue."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.link.join(asyncio.get_running_loop())
        self.link.connecting = asyncio.get_running_loop().create_task(self.link.proxy.connect(self.link))


class Direction:
    """The bytes from ``source`` to ``sink``, each delivered ``delay`` seconds after it arrived, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, source: Side, sink: Side):
        self.loop, self.delay, self.source, self.sink = loop, delay, source, sink
        self.queue: collections.deque = collections.deque()      # (due time, bytes or EOF)
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.sink_paused = False
        self.reading = True
        self.finished = False           # the EOF was delivered

    def push(self, data: bytes | None) -> None:
        self.queue.append((self.loop.time() + self.delay, data))
        self.queued += len(data or b"")
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self.deliver)
        self.throttle()

    def deliver(self) -> None:
        self.timer = None
        if self.sink.transport is None:                   # not connected yet: Proxy.connect delivers then
            return
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:    # never early, whatever the timer's rounding
            _, data = self.queue.popleft()
            if data is EOF:
                self.finish()
                return
            self.queued -= len(data)
            self.sink.transport.write(data)
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self.deliver)
        self.throttle()

    def restart(self) -> None:
        """Deliver what waited for the sink to connect (the timer that found no sink is replaced)."""
        if self.timer is not None:
            self.timer.cancel()
        self.deliver()

    def finish(self) -> None:
        self.finished = True
        if self.sink.transport.can_write_eof():
            self.sink.transport.write_eof()
        self.source.link.half_closed()

    def throttle(self) -> None:
        """Stop reading the source while too much waits here or the sink's socket is full; resume below half."""
        transport = self.source.transport
        if self.reading and (self.queued > QUEUE_LIMIT or self.sink_paused):
            self.reading = False
            transport.pause_reading()
        elif not self.reading and self.queued <= QUEUE_LIMIT // 2 and not self.sink_paused \
                and not transport.is_closing():
            self.reading = True
            transport.resume_reading()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class Link:
    """One client connection and its connection to the target."""

    def __init__(self, proxy: "Proxy", delay: float):
        self.proxy = proxy
        self.client, self.upstream = ClientSide(self), Side(self)
        self.delay = delay
        self.closed = False
        self.connecting: asyncio.Task | None = None

    def join(self, loop: asyncio.AbstractEventLoop) -> None:
        self.client.outbound = self.upstream.inbound = Direction(loop, self.delay, self.client, self.upstream)
        self.upstream.outbound = self.client.inbound = Direction(loop, self.delay, self.upstream, self.client)

    def half_closed(self) -> None:
        """Both directions delivered their EOF: close both sockets (after what they still have to send)."""
        if self.client.outbound.finished and self.upstream.outbound.finished:
            self.close(abort=False)

    def lost(self, side: Side) -> None:
        self.close(abort=True)          # a reset or an error on one side: the other side sees one too

    def close(self, *, abort: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.links.discard(self)
        for side in (self.client, self.upstream):
            if side.outbound is not None:
                side.outbound.cancel()
            if side.transport is not None:
                side.transport.abort() if abort else side.transport.close()


class Proxy:
    """The listening socket and the links it made; runs on one event loop."""

    def __init__(self, target: tuple[str, int], delay: float, port: int = 0):
        self.target, self.delay, self.port = target, delay, port
        self.links: set[Link] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._accept, HOST, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    def _accept(self) -> Side:
        link = Link(self, self.delay)
        self.links.add(link)
        return link.client

    async def connect(self, link: Link) -> None:
        """Runs once the client is accepted (its reading paused): connect to the target, then let bytes flow."""
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: link.upstream, *self.target)
        except OSError:
            link.close(abort=True)
            return
        if link.closed:                                # the client went away while connecting
            link.upstream.transport.abort()
            return
        link.client.outbound.restart()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for link in list(self.links):
            link.close(abort=True)


class DelayProxy:
    """A ``Proxy`` on a thread of its own: ``with DelayProxy((host, port), delay_s) as proxy: ... proxy.port``."""

    def __init__(self, target: tuple[str, int], delay: float, port: int = 0):
        self._proxy = Proxy(target, delay, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="wanproxy", daemon=True)
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._failure: BaseException | None = None

    @property
    def port(self) -> int:
        return self._proxy.port

    def start(self) -> "DelayProxy":
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join()

    def __enter__(self) -> "DelayProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        try:
            await self._proxy.start()
        except BaseException as exc:
            self._failure = exc
            return
        finally:
            self._ready.set()
        await self._stopped.wait()
        await self._proxy.stop()


class ProxyProcess:
    """``bench/wanproxy.py`` as a child process: ``with ProxyProcess(port, delay_ms) as proxy: ... proxy.port``."""

    def __init__(self, target_port: int, delay_ms: float, target_host: str = HOST):
        self._args = [sys.executable, str(Path(__file__).resolve()), "--to", f"{target_host}:{target_port}",
                      "--delay-ms", str(delay_ms)]
        self._proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> "ProxyProcess":
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline()
        if not line.startswith("listening on "):
            self.__exit__()
            raise RuntimeError(f"the delay proxy did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def __exit__(self, *exc) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


async def serve(target: tuple[str, int], delay: float, port: int) -> None:
    proxy = Proxy(target, delay, port)
    await proxy.start()
    print(f"listening on {HOST}:{proxy.port}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    await proxy.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay added in each direction")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    asyncio.run(serve((host, int(port)), args.delay_ms / 1000, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
