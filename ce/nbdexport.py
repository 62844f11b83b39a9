"""A file on an SMB share served read-only over NBD on a local Unix socket, so qemu-img reads it where it is.

qemu-img has no smb:// driver, so a disk image on a share used to be downloaded into local scratch space first:
as much local space as the image holds data, which the CE VM's own small disk does not have for a real golden
image. qemu-img does speak NBD, and an NBD export is only a read of N bytes at offset X -- exactly what an SMB READ
is. ``ShareExport`` answers qemu-img's NBD requests from an open ``RemoteReader``; qemu-img stays the only reader
of the VHD / VHDX format (its checks, its BAT, its bitmaps).

Protocol: the fixed newstyle handshake with NBD_OPT_GO / NBD_OPT_INFO (and NBD_OPT_EXPORT_NAME for old clients),
simple replies, read-only transmission: NBD_CMD_READ and NBD_CMD_DISC; every other command gets EPERM or EINVAL
(https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md). One thread per client connection; reads
are serialized, since they share one SMB session. An SMB failure while serving a read is answered with EIO and
kept in ``error``, so the caller reports the share's own error rather than qemu-img's "Input/output error".
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import socket
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import disks, staging
from .errors import CeError, ConversionFailed

log = logging.getLogger(__name__)

NBD_MAGIC = b"NBDMAGIC"
OPTION_MAGIC = b"IHAVEOPT"
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST = struct.Struct(">IHHQQI")             # magic, command flags, type, cookie, offset, length
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY = struct.Struct(">IIQ")          # magic, error, cookie
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_INFO, OPT_GO = 1, 2, 6, 7
REP_ACK, REP_INFO = 1, 3
REP_ERR_UNSUP, REP_ERR_INVALID = (1 << 31) + 1, (1 << 31) + 3
INFO_EXPORT = 0
TRANSMISSION_FLAGS = 1 | 2                    # NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY
CMD_READ, CMD_DISC = 0, 2
EPERM, EIO, EINVAL = 1, 5, 22
MAX_SOCKET_PATH = 104                         # sun_path holds 108 bytes with its NUL; keep a margin
SHORT_BASE = "/tmp"
MAX_READ = 32 << 20                           # qemu's NBD client never asks for more in one request
WRITING_COMMANDS = {1, 3, 4, 5, 6}            # WRITE, FLUSH, TRIM, CACHE, WRITE_ZEROES
CHILD_START_TIMEOUT = 120


@contextmanager
def serving(location, name: str, directory) -> Iterator["ShareExport"]:
    """Connect to ``location`` (a ce.smb.StorageLocation), open ``name`` there and serve it from a socket in
    ``directory`` until the block ends; qemu-img failures caused by the share raise the share's error."""
    with location.share() as share, share.open_read(name) as reader, ShareExport(reader, directory) as export, \
            export.raising_share_errors():
        yield export


@contextmanager
def serving_in_child(location, name: str, directory) -> Iterator["ChildExport"]:
    """``serving`` in a process of its own, for a caller whose thread keeps the GIL while qemu reads the export:
    libguestfs's Python bindings hold it for the whole of a call (a launch, a read), so an export served by the
    caller's own threads would never answer and the call would never return. The location, password included, goes
    to the child through the multiprocessing pipe, never through argv or the environment."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_serve_for_parent, args=(location, name, os.fspath(directory), theirs),
                            name="ce-nbd-export", daemon=True)
    child.start()
    theirs.close()
    try:
        if not ours.poll(CHILD_START_TIMEOUT):
            raise ConversionFailed(f"the NBD export of {name} did not start within {CHILD_START_TIMEOUT} s")
        kind, *details = ours.recv()
        if kind == "error":
            raise CeError(details[1], code=details[0])
        yield ChildExport(ours, uri=details[0], size=details[1])
    finally:
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            ours.send(("stop",))
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
        ours.close()


class ChildExport:
    """The handle of an export served by ``serving_in_child``: its URI, size and the share errors it met."""

    def __init__(self, pipe, *, uri: str, size: int):
        self._pipe, self.uri, self.size = pipe, uri, size

    def share_error(self) -> tuple[str, str] | None:
        """(code, message) of the first share read that failed while serving, if one did."""
        self._pipe.send(("error?",))
        return self._pipe.recv()

    @contextmanager
    def raising_share_errors(self):
        """As ``ShareExport.raising_share_errors``: a qemu failure caused by the share raises the share's error."""
        try:
            yield
        except CeError as exc:
            found = self.share_error()
            if found is None:
                raise
            raise CeError(f"{found[1]}; {exc.message}", code=found[0]) from exc


def _serve_for_parent(location, name: str, directory: str, pipe) -> None:
    """The child's side: serve until the parent says stop (or goes away), answering its questions."""
    try:
        with serving(location, name, directory) as export:
            pipe.send(("ready", export.uri, export.size))
            while pipe.recv()[0] != "stop":
                error = export.error
                pipe.send(None if error is None else (getattr(error, "code", "smb_error"),
                                                      getattr(error, "message", str(error))))
    except CeError as exc:
        with contextlib.suppress(OSError):
            pipe.send(("error", exc.code, exc.message))
    except (EOFError, OSError):
        pass                                         # the parent went away: stop serving


def verify(directory, fmt: str, subformat: str | None, virtual_size: int, what: str, reader) -> None:
    """qemu-img opens and checks the file behind ``reader`` as it would a local one: a container ce streamed to a
    share is read back by the format's own reader, not by the code that wrote it, before it gets its final name."""
    from .smb.reader import ReadAhead
    cached = ReadAhead(reader)          # the metadata walk: a round trip per 4 MiB window, not per read
    with ShareExport(cached, directory) as export, export.raising_share_errors():
        found = disks.remote_info(export.uri, fmt, what, cached.read_at, export.size)
    expected = (disks.qemu_format(fmt), subformat, virtual_size)
    if (found.format, found.subformat, found.virtual_size) != expected:
        raise ConversionFailed(f"{what} reads back as {found.format} {found.subformat} of "
                               f"{found.virtual_size} bytes, not {expected[0]} {expected[1]} of {expected[2]}")


class ShareExport:
    """``with ShareExport(reader, directory) as export:`` -- qemu-img opens ``export.uri``."""

    def __init__(self, reader, directory):
        self.reader = reader
        self.size = reader.size
        self.socket_path = Path(directory) / "nbd.sock"
        self._own_dir: Path | None = None
        if len(os.fsencode(self.socket_path)) >= MAX_SOCKET_PATH:
            # A Unix socket's path is limited to 107 bytes: a deep scratch directory gets a short one of its own
            # (named after this process, so the next step removes it if this one is killed).
            self._own_dir = staging.make_scratch_dir("nbd", base=SHORT_BASE)
            self.socket_path = self._own_dir / "nbd.sock"
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.socket_path}"

    def __enter__(self) -> "ShareExport":
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)            # only this user (qemu-img runs as it) may read the share
        self._listener.listen(4)
        self._start(self._accept_loop)
        return self

    def __exit__(self, *exc) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for thread in self._threads:
            thread.join(10)
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    @contextmanager
    def raising_share_errors(self):
        """When qemu-img fails because a read from the share failed, raise the share's error (its code) with what
        the failed operation left behind (qemu-img's failure, which says so)."""
        try:
            yield
        except CeError as exc:
            if self.error is None or self.error is exc:
                raise
            cause = self.error
            code = getattr(cause, "code", exc.code)
            raise CeError(f"{getattr(cause, 'message', cause)}; {exc.message}", code=code) from exc

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="nbd-export")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except OSError:                         # the listener was closed
                return
            self._start(self._session, client)

    def _session(self, client: socket.socket) -> None:
        with client:
            try:
                if self._handshake(client):
                    self._transmission(client)
            except (ConnectionError, EOFError):
                pass                                # the client went away (qemu-img ended or was killed)

    # ------------------------------------------------ handshake

    def _handshake(self, client: socket.socket) -> bool:
        client.sendall(NBD_MAGIC + OPTION_MAGIC + struct.pack(">H", FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        client_flags, = struct.unpack(">I", _receive(client, 4))
        while True:
            magic, option, length = struct.unpack(">8sII", _receive(client, 16))
            if length:
                _receive(client, length)           # the export name and info requests: there is one export
            if magic != OPTION_MAGIC:
                return False
            if option == OPT_EXPORT_NAME:
                zeroes = b"" if client_flags & FLAG_NO_ZEROES else bytes(124)
                client.sendall(struct.pack(">QH", self.size, TRANSMISSION_FLAGS) + zeroes)
                return True
            if option in (OPT_GO, OPT_INFO):
                self._reply(client, option, REP_INFO, struct.pack(">HQH", INFO_EXPORT, self.size, TRANSMISSION_FLAGS))
                self._reply(client, option, REP_ACK)
                if option == OPT_GO:
                    return True
            elif option == OPT_ABORT:
                self._reply(client, option, REP_ACK)
                return False
            else:                                   # structured replies, meta contexts, TLS, ...: not offered
                self._reply(client, option, REP_ERR_UNSUP)

    @staticmethod
    def _reply(client: socket.socket, option: int, kind: int, data: bytes = b"") -> None:
        client.sendall(struct.pack(">QIII", OPTION_REPLY_MAGIC, option, kind, len(data)) + data)

    # ------------------------------------------------ transmission

    def _transmission(self, client: socket.socket) -> None:
        while True:
            magic, _flags, command, cookie, offset, length = REQUEST.unpack(_receive(client, REQUEST.size))
            if magic != REQUEST_MAGIC or command == CMD_DISC:
                return
            if command in WRITING_COMMANDS:
                if command == 1:                    # a WRITE carries its payload: read it to stay in step
                    _receive(client, length)
                client.sendall(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, EPERM, cookie))
            elif command != CMD_READ or length > MAX_READ or offset + length > self.size:
                client.sendall(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, EINVAL, cookie))
            else:
                self._serve_read(client, cookie, offset, length)

    def _serve_read(self, client: socket.socket, cookie: int, offset: int, length: int) -> None:
        buffer = bytearray(length)
        try:
            with self._lock:
                self.reader.read_exactly(offset, memoryview(buffer))
        except Exception as exc:                    # answered as EIO; the caller raises the share's own error
            log.warning("reading %s at %d for qemu-img failed: %s", self.reader.path, offset, exc)
            self.error = self.error or exc
            client.sendall(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, EIO, cookie))
            return
        client.sendall(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, cookie))
        client.sendall(buffer)


def _receive(client: socket.socket, length: int) -> bytes:
    data = bytearray()
    while len(data) < length:
        piece = client.recv(length - len(data))
        if not piece:
            raise EOFError("the NBD client closed the connection")
        data += piece
    return bytes(data)
