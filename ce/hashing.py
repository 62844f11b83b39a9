"""md5 / sha256 of a disk's *contents*: the bytes a virtual machine reads from it, 0 .. virtual size.

Why contents and not the file: the service hashes a disk object (``hashDisk`` on export, the ``md5Hash`` pre-check on
prepare), and the same disk travels as a raw block device, a VHDX on a share, a VMDK on a datastore. Hashing the
guest-visible bytes gives one value for all of them, so a hash taken at export can be checked after an upload or
a reverse image. (``hash_file`` hashes a file's own bytes, for checking a copy.)

How: raw files and block devices are read directly; holes are fed to the hashers as zeros without reading them.
Other formats are decoded by qemu-img in slices (``--image-opts driver=raw,offset=..,size=..`` over the format
driver) into a RAM-backed scratch file that is hashed and then dropped; qemu-img cannot write to a pipe and the
kernel cannot attach NBD devices here, so this keeps the decoding in qemu-img with bounded memory. The next slice
is decoded while the current one is hashed.

The loop is a bare hashlib loop (bench/hashing.py measures it against one, md5sum and sha256sum) with the reads
taken off it: a reader thread reads the next block with ``preadv`` (into three reused buffers of ``BLOCK`` bytes)
while the current one is hashed, so the hashing thread does nothing but hash, and the kernel is told the reads are
sequential (twice the readahead on a cold disk). Not ``mmap``, which would save the copy too: a file that shrinks
under it kills the process with SIGBUS instead of raising DiskUnreadable. The first algorithm is hashed in the
calling thread; each further one in a thread of its own (hashlib releases the GIL on large updates) on the same
buffers, one block behind at most, so md5 + sha256 together cost about as much as the slower one alone. A file on
a share is hashed in threads only, while its next chunk comes over the network.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import queue
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

from . import disks, staging
from .disks import qemuimg
from .disks.extents import READ_CHUNK, data_extents, zeros
from .errors import Canceled, DiskUnreadable, InvalidParams

MiB = 1 << 20
ALGORITHMS = ("md5", "sha256")
BLOCK = 1 * MiB                          # read and hashed at a time (128 KiB .. 1 MiB: equal CPU; 8 MiB: +12 %)
PROGRESS_STEP = 8 * MiB                  # progress is reported this often (and at the end)
SLICE = 256 * MiB                        # qemu-img decodes this much per run into the scratch directory
REMOTE_CHUNK = 8 * MiB                   # a file on a share is read (and hashed) this much at a time
SCRATCH_DIRS = ("/dev/shm",)             # RAM first; the system temp directory otherwise

Progress = Callable[[int, int], None]    # (bytes hashed, total)
_ZEROS = memoryview(zeros(READ_CHUNK))


@dataclass
class DiskHash:
    path: str
    format: str                          # qemu-img format name of what was decoded ("raw" for a plain file)
    size: int                            # bytes hashed: the virtual size (or the file size for hash_file)
    hashes: dict[str, str]               # algorithm -> lowercase hex

    def to_json(self) -> dict:
        return {"path": self.path, "format": self.format, "size": self.size, **self.hashes}


def check_algorithms(algorithms) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(a.lower() for a in algorithms))
    unknown = [a for a in chosen if a not in ALGORITHMS]
    if unknown or not chosen:
        raise InvalidParams(f"unknown hash algorithm(s) {', '.join(unknown) or '(none given)'}: choose from "
                            f"{', '.join(ALGORITHMS)}")
    return chosen


def hash_disk(path, fmt: str | None = None, algorithms=ALGORITHMS, *, progress: Progress | None = None,
              cancel=None) -> DiskHash:
    """Hash the guest-visible contents of a disk image or block device."""
    path = os.fspath(path)
    algorithms = check_algorithms(algorithms)
    info = disks.info(path, fmt)
    disks.refuse_differencing(info)
    if info.format == "raw":
        blocks = file_blocks(path, info.virtual_size)
    else:
        blocks = decoded_blocks(info, cancel)
    hashes = _digest(blocks, algorithms, info.virtual_size, progress, cancel)
    return DiskHash(path=path, format=info.format, size=info.virtual_size, hashes=hashes)


def hash_file(path, algorithms=ALGORITHMS, *, progress: Progress | None = None, cancel=None) -> DiskHash:
    """Hash a file's (or block device's) own bytes, whatever format it holds."""
    path = os.fspath(path)
    algorithms = check_algorithms(algorithms)
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
    hashes = _digest(file_blocks(path, size), algorithms, size, progress, cancel)
    return DiskHash(path=path, format="file", size=size, hashes=hashes)


class ContentHasher:
    """The hashes of a disk's contents from the chunks another reader goes through anyway (a streamed export reads
    the disk once for both): ``feed(offset, data)`` in increasing offsets, gaps between chunks are zeros (holes);
    ``finish()`` hashes up to ``size`` and returns the DiskHash. Each algorithm runs in its own thread on a copy of
    the chunk while the caller goes on with its buffer.

    ``inline``: the first algorithm is hashed in the caller's thread instead (hashing is all the caller does: a
    hand-off would only cost time), the others still in threads of their own."""

    def __init__(self, path: str, size: int, algorithms=ALGORITHMS, *, inline: bool = False):
        self.path, self.size = path, size
        self.algorithms = check_algorithms(algorithms)
        hashers = [hashlib.new(name) for name in self.algorithms]
        self._inline, self._threaded = (hashers[0], hashers[1:]) if inline else (None, hashers)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(self._threaded)) if self._threaded \
            else None
        self._running: list[concurrent.futures.Future] = []
        self._position = 0

    def feed(self, offset: int, data) -> None:
        if offset < self._position:
            raise ValueError(f"chunk at {offset} is behind the position {self._position}")
        self._zeros_until(offset)
        self.update(bytes(data))
        self._position = offset + len(data)

    def __enter__(self) -> "ContentHasher":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool:
            self._pool.shutdown(cancel_futures=True)

    def finish(self) -> DiskHash:
        self._zeros_until(self.size)
        return DiskHash(path=self.path, format="raw", size=self.size, hashes=self.hexdigests())

    def update(self, block) -> None:
        """Hash ``block`` next, without a copy: it must stay unchanged until the next update (double buffers)."""
        self._wait()
        self._running = [self._pool.submit(h.update, block) for h in self._threaded]
        if self._inline:
            self._inline.update(block)

    def hexdigests(self) -> dict[str, str]:
        self._wait()
        hashers = [self._inline, *self._threaded] if self._inline else self._threaded
        return {name: h.hexdigest() for name, h in zip(self.algorithms, hashers)}

    def _zeros_until(self, end: int) -> None:
        while self._position < end:
            step = min(READ_CHUNK, end - self._position)
            self.update(_ZEROS[:step])
            self._position += step

    def _wait(self) -> None:
        for future in self._running:
            future.result()
        self._running = []


def hash_remote_file(read_at, size: int, what: str, algorithms=ALGORITHMS, *, progress: Progress | None = None,
                     cancel=None) -> DiskHash:
    """Hash the bytes of a file elsewhere (on a share), read through ``read_at(offset, length)``."""
    algorithms = check_algorithms(algorithms)

    def blocks() -> Iterator[memoryview]:
        for offset in range(0, size, REMOTE_CHUNK):
            yield memoryview(read_at(offset, min(REMOTE_CHUNK, size - offset)))
    # every algorithm in a thread: the next chunk comes over the network meanwhile
    hashes = _digest(blocks(), algorithms, size, progress, cancel, inline=False)
    return DiskHash(path=what, format="file", size=size, hashes=hashes)


# ---------------------------------------------------------------- sources of blocks

def decoded_blocks(info: disks.DiskInfo, cancel, length: int | None = None) -> Iterator[memoryview]:
    """The guest-visible bytes of a non-raw image (its first ``length`` bytes), decoded slice by slice by
    qemu-img into scratch files. The next slice is decoded in the background while the current one is used."""
    end = info.virtual_size if length is None else min(length, info.virtual_size)
    scratch = str(staging.make_scratch_dir("hash", _scratch_dir()))      # removed by the next one if killed
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    slices = [(offset, min(SLICE, end - offset)) for offset in range(0, end, SLICE)]
    try:
        pending = pool.submit(_decode_slice, info, scratch, 0, *slices[0]) if slices else None
        for index in range(len(slices)):
            current = pending.result()
            if index + 1 < len(slices):
                pending = pool.submit(_decode_slice, info, scratch, index + 1, *slices[index + 1])
            try:
                yield from file_blocks(current, slices[index][1])
            finally:
                os.remove(current)
            disks.stop_if_canceled(cancel)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for name in os.listdir(scratch):
            os.remove(os.path.join(scratch, name))
        os.rmdir(scratch)


def file_blocks(path: str, size: int) -> Iterator[memoryview]:
    """The first ``size`` bytes of a file or block device in BLOCK pieces, holes as zeros without reading them.

    The next block is read in a thread of its own while the caller uses the current one, so the copy out of the
    page cache (a tenth of md5's time) is off the hashing thread. Three buffers take turns: a block stays unchanged
    until the one after the next is asked for, so a hasher thread may still be reading it."""
    buffers = [memoryview(bytearray(BLOCK)) for _ in range(3)]
    empty = memoryview(zeros(BLOCK))
    fd = os.open(path, os.O_RDONLY)
    reader = _ReadAhead(fd, path)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        turn, pending = 0, None
        for offset, length, is_data in _pieces(fd, size):
            if not is_data:
                if pending is not None:
                    yield reader.result(pending)
                    pending = None
                yield empty[:length]
                continue
            view = buffers[turn][:length]
            turn = (turn + 1) % len(buffers)
            reader.start(view, offset)
            if pending is not None:
                yield reader.result(pending)
            pending = view
        if pending is not None:
            yield reader.result(pending)
    finally:
        reader.stop()
        os.close(fd)


def _pieces(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is data) of the first ``size`` bytes in BLOCK pieces: data extents and the holes between."""
    position = 0
    for offset, length in data_extents(fd, os.fstat(fd).st_size or size):
        if offset >= size:
            break
        for is_data, end in ((False, offset), (True, min(offset + length, size))):
            while position < end:
                step = min(BLOCK, end - position)
                yield position, step, is_data
                position += step
    while position < size:                                      # a trailing hole
        step = min(BLOCK, size - position)
        yield position, step, False
        position += step


class _ReadAhead:
    """One thread that reads blocks in the order they are asked for; ``result(view)`` waits for the oldest."""

    def __init__(self, fd: int, path: str):
        self.fd, self.path = fd, path
        self._asked: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hash-read", daemon=True)
        self._thread.start()

    def start(self, view: memoryview, offset: int) -> None:
        self._asked.put((view, offset))

    def result(self, view: memoryview) -> memoryview:
        offset, outcome = self._done.get()
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome != len(view):
            raise DiskUnreadable(f"{self.path} shrank while it was being read (short read at {offset})")
        return view

    def stop(self) -> None:
        self._asked.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (asked := self._asked.get()) is not None:
            view, offset = asked
            try:
                self._done.put((offset, os.preadv(self.fd, [view], offset)))
            except OSError as exc:
                self._done.put((offset, exc))


def _decode_slice(info: disks.DiskInfo, scratch: str, index: int, offset: int, length: int) -> str:
    protocol = "host_device" if info.is_block_device else "file"
    source = {"driver": "raw", "offset": offset, "size": length,
              "file": {"driver": info.format, "file": {"driver": protocol, "filename": info.path}}}
    out = os.path.join(scratch, f"slice-{index}.raw")
    qemuimg.run("convert", *qemuimg.CONVERT_FLAGS[1:], "-U", "json:" + json.dumps(source), "-O", "raw", out,
                fails_as=DiskUnreadable,
                doing=f"cannot read {info.path} as {disks.FORMAT_LABELS[info.format]} at offset {offset}")
    return out


def _scratch_dir() -> str:
    """A RAM-backed directory with room for two slices, else the temp directory."""
    for candidate in SCRATCH_DIRS:
        try:
            stats = os.statvfs(candidate)
        except OSError:
            continue
        if os.access(candidate, os.W_OK) and stats.f_bavail * stats.f_frsize > 4 * SLICE:
            return candidate
    return tempfile.gettempdir()


# ---------------------------------------------------------------- hashing

def _digest(blocks: Iterator[memoryview], algorithms: tuple[str, ...], total: int, progress: Progress | None,
            cancel, *, inline: bool = True) -> dict[str, str]:
    """Feed every block to each algorithm: the first in this thread (``inline``), the others in threads of their
    own, which go on with a block while the next one is read."""
    done = reported = 0
    with ContentHasher("", total, algorithms, inline=inline) as hasher:
        for block in blocks:
            hasher.update(block)             # waits until the block before this one is finished with its buffer
            if disks.is_canceled(cancel):
                raise Canceled("hashing was canceled")
            done += len(block)
            if progress and (done - reported >= PROGRESS_STEP or done == total):
                progress(done, total)
                reported = done
        hashes = hasher.hexdigests()
    if done != total:
        raise DiskUnreadable(f"hashed {done} bytes but the disk has {total}")
    return hashes
