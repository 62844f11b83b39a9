"""Local files and block devices: what a path is, its size, reads at an offset, the data extents of a sparse file
(SEEK_DATA / SEEK_HOLE) and its bytes read with the holes supplied as zeros instead of being read."""
from __future__ import annotations

import errno
import functools
import os
import stat
from typing import Iterator

from ..errors import DiskNotFound, DiskUnreadable, EmptyDisk

MiB = 1 << 20
READ_CHUNK = 8 * MiB


# ---------------------------------------------------------------- what a path is

def disk_kind(path: str) -> bool:
    """True for a block device, False for a regular file; raises if it is neither, missing, or empty."""
    try:
        mode = os.stat(path).st_mode
        is_block = stat.S_ISBLK(mode)
        if not (is_block or stat.S_ISREG(mode)):
            raise DiskUnreadable(f"{path} is not a disk image file or block device")
        size = byte_size(path)
    except FileNotFoundError:
        raise DiskNotFound(f"{path} does not exist: check the path, or that the disk is attached") from None
    except OSError as exc:
        raise DiskUnreadable(f"cannot read {path}: {exc.strerror}") from None
    if size == 0:
        raise EmptyDisk(f"{path} is empty (0 bytes): the copy or the attach did not complete")
    return is_block


def byte_size(path) -> int:
    """The length of a file or block device in bytes (qemu-img rounds a raw file's size up to whole sectors)."""
    with open(os.fspath(path), "rb") as f:          # st_size is 0 for block devices; seeking works for both
        return f.seek(0, os.SEEK_END)


# ---------------------------------------------------------------- reads at an offset

def read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def head(path: str, length: int) -> bytes:
    return read_at(path, 0, length)


def tail(path: str, length: int) -> bytes:
    return read_at(path, max(byte_size(path) - length, 0), length)


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


# ---------------------------------------------------------------- sparse files

def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the data regions of a local file; one extent when the file system cannot tell."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:          # only a hole is left
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield offset, size - offset
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end - start
        offset = end


def chunks(extents, chunk: int, boundary: int | None = None) -> Iterator[tuple[int, int]]:
    """Pieces of at most ``chunk`` bytes that never cross a multiple of ``boundary`` (a container's block)."""
    for offset, length in extents:
        start, end = offset, offset + length
        while start < end:
            stop = min(start + chunk, end)
            if boundary:
                stop = min(stop, (start // boundary + 1) * boundary)
            yield start, stop - start
            start = stop


@functools.lru_cache(maxsize=8)
def zeros(length: int) -> bytes:
    return bytes(length)


def file_blocks(path: str, size: int, start: int = 0) -> Iterator[memoryview]:
    """The bytes of ``path`` from ``start`` to ``start + size`` in READ_CHUNK pieces; holes come from a zero buffer.

    Two buffers take turns: a block stays unchanged until the one after the next is asked for, so a consumer may
    still be using it (a hasher thread) while the next one is read."""
    buffers = [bytearray(READ_CHUNK), bytearray(READ_CHUNK)]
    empty = memoryview(zeros(READ_CHUNK))
    turn = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        position = start
        for offset, length in _extents_within(fd, start, size):
            while position < offset:                            # a hole
                step = min(READ_CHUNK, offset - position)
                yield empty[:step]
                position += step
            while position < offset + length:
                step = min(READ_CHUNK, offset + length - position)
                view = memoryview(buffers[turn])[:step]
                got = os.preadv(fd, [view], position)
                if got != step:
                    raise DiskUnreadable(f"{path} shrank while it was being read (short read at {position})")
                yield view
                turn ^= 1
                position += step
        while position < start + size:                          # a trailing hole
            step = min(READ_CHUNK, start + size - position)
            yield empty[:step]
            position += step
    finally:
        os.close(fd)


def _extents_within(fd: int, start: int, size: int) -> Iterator[tuple[int, int]]:
    end = start + size
    for offset, length in data_extents(fd, os.fstat(fd).st_size or end):
        lo, hi = max(offset, start), min(offset + length, end)
        if lo < hi:
            yield lo, hi - lo
    # a block device reports st_size 0; data_extents then covers [0, end), which the clamp above handles
