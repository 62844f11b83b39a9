"""``RemoteReader``: a read-only, seekable file on a share, read in credit-sized chunks, several on the wire."""
from __future__ import annotations

import functools
import io

from smbprotocol.open import Open

from ..errors import TransferFailed
from ..disks.extents import chunks
from .pipeline import Pipeline, copy_read
from .protocol import close_quietly


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
