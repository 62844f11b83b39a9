"""Starting the write-back of an output's dirty pages while it is still being written, so that the flush at the end
(create.partial_output fsyncs every output ce keeps) finds most of them on disk already. Without it a conversion's
writes all wait in the page cache and the flush of a 1 GiB output took as long as the copy itself here (~0.5 s);
with it the disk writes while ce copies (bench/disks.py, README "Speed").

``sync_file_range(SYNC_FILE_RANGE_WRITE)`` only queues the writes: it waits for nothing and promises nothing, so
durability stays the fsync's; where the call is missing (not Linux) nothing is started early."""
from __future__ import annotations

import ctypes
import functools
import os

SYNC_FILE_RANGE_WRITE = 2
EVERY = 32 << 20                      # bytes written between two starts (every 8 MiB was no faster here)


@functools.cache
def _sync_file_range():
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


def start_writeback(fd: int) -> None:
    """Queue every dirty page of ``fd``'s file for writing; a failure shows at the fsync, not here."""
    function = _sync_file_range()
    if function:
        function(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def drop_written(fd: int) -> None:
    """Let the page cache forget the pages of ``fd``'s file that are already on disk (dirty ones stay)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


class EarlyWriteback:
    """Counts the bytes written to ``fd`` and every EVERY bytes (when ``enabled``) starts their write-back and drops
    what earlier starts wrote from the page cache: kept, a 4 GiB output filled the cache and the kernel's reclaim
    cost more than the copy (fill of 4 GiB dense into a VHDX: 5.0 s, 4.0 s CPU kept; 2.9 s, 2.1 s CPU dropped)."""

    def __init__(self, fd: int, enabled: bool):
        self.fd, self.enabled, self.pending = fd, enabled, 0

    def wrote(self, length: int) -> None:
        self.pending += length
        if self.enabled and self.pending >= EVERY:
            start_writeback(self.fd)
            drop_written(self.fd)
            self.pending = 0


def while_written(path: str, progress):
    """``progress`` for a program writing ``path`` (qemu-img convert): each report also starts the write-back of
    what the file holds so far and drops what is already on disk from the page cache."""
    def report(percent: float) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:                   # not created yet
            pass
        else:
            try:
                start_writeback(fd)
                drop_written(fd)
            finally:
                os.close(fd)
        if progress:
            progress(percent)
    return report
