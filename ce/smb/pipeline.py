"""Requests on the wire: chunk sizes, ``Pipeline`` (up to WINDOW bytes of requests outstanding, completed in order
with progress and cancel checks) and the completions that check what each WRITE or READ did."""
from __future__ import annotations

import collections
import os
from typing import Callable

from smbprotocol.connection import Connection
from smbprotocol.open import SMB2ReadResponse, SMB2WriteResponse

from ..errors import Canceled, TransferFailed
from .protocol import unpack
from .wire import has_credits

MiB = 1 << 20
# Downloads go through smbprotocol, which copies each message several times into fresh allocations: measured here
# (256 MiB to Samba 4.17 on 127.0.0.1, SMB 3.1.1 signed, 2 vCPUs, 4 requests in flight) 1 MiB reads ran at
# 520-610 MB/s, 4 MiB at 540-580, 8 MiB at ~310 (page faults dominate). Uploads build their WRITE requests in one
# reusable buffer (ce.smb.wire), so they use the largest write the server allows, up to 8 MiB as smbclient does.
# The window is bytes on the wire, not a count of requests: a link needs its bandwidth-delay product in flight,
# whatever the request size. Measured through bench/wanproxy.py at 30 ms each way (bench/wan.py, README): 2 writes
# of 8 MiB in flight (16 MiB, smbclient's window) ran at 0.5-0.9x the speed of 4 or more, which all reached the
# link's rate; 1 MiB reads, 4 in flight, ran at 32 MB/s, 16 or 32 in flight at 60-70 MB/s. 32 MiB: 4 writes,
# 32 reads, enough for 60 ms of round trip at 550 MB/s; no local memory is held per write (ce.smb.wire).
READ_CHUNK = 1 * MiB
WRITE_CHUNK = 8 * MiB
WINDOW = 32 * MiB
ZERO_CHUNK = bytes(READ_CHUNK)

Progress = Callable[[int, int], None]


class Pipeline:
    """Keeps up to WINDOW bytes of requests on the wire and completes them in order, reporting progress and checking
    ``cancel`` after each (with 8 MiB writes a whole small file is on the wire before the first completes).
    ``make_room(length)`` comes before each request sent, and ``add`` counts that length as on the wire."""

    def __init__(self, connection: Connection, progress: Progress | None, total: int, cancel=None):
        self._connection = connection
        self._progress = progress
        self._total = total
        self._cancel = cancel
        self._pending = collections.deque()       # (sent request or None for a skipped chunk, end, finish, bytes)
        self._on_wire = 0
        self._next = 0                            # the length make_room made room for

    def make_room(self, length: int) -> None:
        while self._pending and (self._on_wire + length > WINDOW or not has_credits(self._connection, length)):
            self._complete_oldest()
        self._next = length

    def add(self, sent, end: int, finish: Callable | None = None) -> None:
        length = self._next if sent is not None else 0
        self._next = 0
        self._pending.append((sent, end, finish, length))
        self._on_wire += length
        while self._pending and self._pending[0][0] is None:
            self._complete_oldest()

    def drain(self) -> None:
        while self._pending:
            self._complete_oldest()

    def _complete_oldest(self) -> None:
        sent, end, finish, length = self._pending.popleft()
        self._on_wire -= length
        if sent is not None:
            response = self._connection.receive(sent)
            if finish is not None:
                finish(response)
        report(self._progress, end, self._total)
        stop_if_canceled(self._cancel)


def is_zero(data: bytes) -> bool:
    return data == (ZERO_CHUNK if len(data) == READ_CHUNK else bytes(len(data)))


def check_written(offset: int, length: int, response) -> None:
    written = unpack(SMB2WriteResponse, response)["count"].get_value()
    if written != length:
        raise TransferFailed(f"the share wrote {written} of {length} bytes at offset {offset}")


def store_read(fd: int, offset: int, length: int, response) -> None:
    data = unpack(SMB2ReadResponse, response)["buffer"].get_value()
    if len(data) != length:
        raise TransferFailed(f"the share returned {len(data)} of {length} bytes at offset {offset}")
    if not is_zero(data):                       # a hole in the local file reads as zeros
        os.pwrite(fd, data, offset)


def copy_read(into: memoryview, at: int, length: int, offset: int, response) -> None:
    data = unpack(SMB2ReadResponse, response)["buffer"].get_value()
    if len(data) != length:
        raise TransferFailed(f"the share returned {len(data)} of {length} bytes at offset {offset}")
    into[at:at + length] = data


def report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def stop_if_canceled(cancel) -> None:
    if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
        raise Canceled("the SMB transfer was canceled; no file was left at the final name")
