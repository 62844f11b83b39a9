"""``RemoteReader``: a read-only, seekable file on a share, read in credit-sized chunks, several on the wire;
``ReadAhead``: its small reads served from aligned windows read whole."""
from __future__ import annotations

import collections
import functools
import io
import threading

from smbprotocol.open import Open

from ..errors import TransferFailed
from ..disks.extents import chunks
from .pipeline import MiB, Pipeline, copy_read
from .protocol import close_quietly

# qemu-img's check of a VHDX ce wrote reads 26 pieces, all in its first 3.1 MiB (headers at 0-256 KiB, metadata at
# 2 MiB, BAT at 3 MiB): one 4 MiB window holds them all. Four windows bound the memory at 16 MiB.
READ_AHEAD_WINDOW = 4 * MiB
READ_AHEAD_KEEP = 4


class RemoteReader(io.RawIOBase):
    """A read-only, seekable file on a share (``SmbShare.open_read``).

    ``failures(doing, path)`` is the share's context manager that turns smbprotocol's exceptions into SMB errors;
    ``send(request)`` sends a request on the share's tree and returns the pending request."""

    def __init__(self, handle: Open, path: str, chunk: int, failures, send, *, size: int | None = None,
                 owns_handle: bool = True):
        super().__init__()
        self._handle = handle
        self._send = send
        self._owns_handle = owns_handle
        self._chunk = chunk                     # at most what the session has credits for
        self._failures = failures
        self.path = path
        self.size = handle.end_of_file if size is None else size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:
        length = min(len(buffer), self.size - self._position, self._chunk)
        if length <= 0:
            return 0
        with self._failures(f"reading {self.path!r}", self.path):
            data = self._handle.read(self._position, length)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (the ``read_at`` callable header readers such as disks.header_facts
        take), short only at the end of the file."""
        length = max(0, min(length, self.size - offset))
        buffer = bytearray(length)
        self.read_exactly(offset, memoryview(buffer))
        return bytes(buffer)

    def read_exactly(self, offset: int, into: memoryview) -> None:
        """Fill ``into`` from ``offset`` with up to WINDOW bytes of reads on the wire; the range must be in the file."""
        if offset + len(into) > self.size:
            raise TransferFailed(f"{self.path!r} holds {self.size} bytes: cannot read {len(into)} at {offset}")
        pipeline = Pipeline(self._handle.connection, None, len(into))
        with self._failures(f"reading {self.path!r}", self.path):
            for start, length in chunks([(offset, len(into))], self._chunk):
                pipeline.make_room(length)
                request, _ = self._handle.read(start, length, send=False)
                pipeline.add(self._send(request), 0, functools.partial(copy_read, into, start - offset, length, start))
            pipeline.drain()

    def close(self) -> None:
        if not self.closed and self._owns_handle:
            close_quietly(self._handle)
        super().close()


class ReadAhead:
    """Small reads of a ``RemoteReader`` served from whole aligned windows kept in memory: qemu-img's metadata walk
    of a file (headers, region tables, BAT: a few dozen reads of 512 bytes to 64 KiB, mostly in the first few MiB)
    then costs a round trip per window, not one per read. At most ``keep`` windows are held (least recently used
    first out); a read of a window or more goes to the reader as it is. Windows are only ever filled from the file,
    so what a read returns is the file's bytes; the file must not change while the cache is in use."""

    def __init__(self, reader, window: int = READ_AHEAD_WINDOW, keep: int = READ_AHEAD_KEEP):
        self._reader = reader
        self._window = window
        self._keep = keep
        self._windows: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.path = reader.path
        self.size = reader.size
        self.fetches = 0                        # reads sent to the share (for tests and benches)

    def read_at(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        buffer = bytearray(length)
        self.read_exactly(offset, memoryview(buffer))
        return bytes(buffer)

    def read_exactly(self, offset: int, into: memoryview) -> None:
        if offset < 0 or offset + len(into) > self.size:
            raise TransferFailed(f"{self.path!r} holds {self.size} bytes: cannot read {len(into)} at {offset}")
        if not len(into):
            return
        if len(into) >= self._window:
            self.fetches += 1
            self._reader.read_exactly(offset, into)
            return
        with self._lock:
            first, last = offset // self._window, (offset + len(into) - 1) // self._window
            self._fetch([index for index in range(first, last + 1) if index not in self._windows])
            for index in range(first, last + 1):
                self._copy(index, offset, into)
            while len(self._windows) > self._keep:  # after the copy: never a window this read still needs
                self._windows.popitem(last=False)

    def _fetch(self, missing: list[int]) -> None:
        """Read the missing windows (at most two, adjacent: a read is shorter than a window) in one pipeline."""
        if not missing:
            return
        start = missing[0] * self._window
        end = min((missing[-1] + 1) * self._window, self.size)
        data = bytearray(end - start)
        self.fetches += 1
        self._reader.read_exactly(start, memoryview(data))
        for index in missing:
            at = index * self._window - start
            self._windows[index] = bytes(data[at:at + self._window])

    def _copy(self, index: int, offset: int, into: memoryview) -> None:
        window = self._windows[index]
        self._windows.move_to_end(index)
        base = index * self._window
        start, end = max(offset, base), min(offset + len(into), base + len(window))
        into[start - offset:end - offset] = window[start - base:end - base]
