"""What VHDX and VHD children share: the sink they are written to, the parent's facts, the changed extents as
runs per block, and the merged bytes of a block (see ce.disks.differencing)."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from ...errors import LayoutError
from ..extents import chunks, round_up, zeros
from ..headers import SECTOR

MiB = 1 << 20
KiB = 1 << 10
WRITE_CHUNK = 8 * MiB
DEFAULT_BLOCK = 2 * MiB                    # Hyper-V's child block size (VHDX), the usual VHD block size


class Sink(Protocol):
    def write_at(self, offset: int, data) -> None: ...


class FileSink:
    """``write_at`` into a local file opened for writing (``open(path, "wb")``): positional writes, holes stay."""

    def __init__(self, f):
        self._fd = f.fileno()

    def write_at(self, offset: int, data) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written


@dataclass(frozen=True)
class ParentFacts:
    """What a child records of its parent and copies from it, read from the parent's headers only."""
    format: str                       # "vhdx" or "vpc"
    virtual_size: int
    identifier: bytes                 # VHDX: DataWriteGuid of the current header (bytes_le); VHD: footer UniqueId
    logical_sector: int = SECTOR
    physical_sector: int = SECTOR
    block_size: int | None = None     # the parent's (None for a fixed VHD)
    page83: bytes = b""               # VHDX: Page 83 Data (virtual disk id, bytes_le)
    footer: bytes = b""               # VHD: the parent's footer (sizes, geometry, features are copied)
    mtime: float | None = None        # VHD: the parent file's modification time (Parent TimeStamp)

    @property
    def identifier_text(self) -> str:
        """As libvhdi and the parent locator print it: the GUID in lowercase."""
        if self.format == "vhdx":
            return str(uuid.UUID(bytes_le=self.identifier))
        return str(uuid.UUID(bytes=self.identifier))


@dataclass
class ChildSummary:
    """What was written: the file's size, the blocks per state, the data bytes and the identifiers."""
    format: str
    file_size: int
    virtual_size: int
    block_size: int
    blocks: dict[str, int] = field(default_factory=dict)
    data_bytes: int = 0               # bytes of disk data written (changed runs and whole blocks)
    identifier: str = ""              # the child's: VHDX DataWriteGuid, VHD UniqueId
    parent_identifier: str = ""
    parent_locator: dict[str, str] = field(default_factory=dict)


def changed_runs(extents: Iterable[tuple[int, int]], size: int, granule: int) -> list[tuple[int, int]]:
    """The extents as sorted (start, end) runs rounded out to ``granule`` (clipped to ``size``) and merged where
    they touch. Refuses extents that are empty, out of [0, size) or that overlap one another."""
    ordered = sorted((int(offset), int(length)) for offset, length in extents)
    runs: list[list[int]] = []
    previous_end = 0
    for offset, length in ordered:
        if length <= 0 or offset < 0:
            raise LayoutError(f"changed extent ({offset}, {length}) is empty or negative")
        if offset + length > size:
            raise LayoutError(f"changed extent ({offset}, {length}) ends at {offset + length}, past the child's "
                              f"end ({size} bytes)")
        if offset < previous_end:
            raise LayoutError(f"changed extent ({offset}, {length}) overlaps the one before it (which ends at "
                              f"{previous_end})")
        previous_end = offset + length
        start, end = offset // granule * granule, min(round_up(offset + length, granule), size)
        if runs and start <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    return [(start, end) for start, end in runs]


class Child:
    """What both formats share: the plan of each block and the merged bytes of a range."""

    def __init__(self, parent: ParentFacts, runs, read_merged, sink: Sink, size: int, block: int):
        self.parent, self.read_merged, self.sink = parent, read_merged, sink
        self.size, self.block = size, block
        self.blocks = -(-size // block)
        self.per_block: dict[int, list[tuple[int, int]]] = {}
        for start, end in runs:
            for offset, length in chunks([(start, end - start)], block, block):
                self.per_block.setdefault(offset // block, []).append((offset, offset + length))
        self.data_bytes = 0
        self.end = 0

    def span(self, b: int) -> tuple[int, int]:
        return b * self.block, min((b + 1) * self.block, self.size)

    def covered(self, b: int) -> bool:
        start, end = self.span(b)
        return self.per_block.get(b) == [(start, end)]

    def put(self, offset: int, data) -> None:
        self.sink.write_at(offset, data)
        self.end = max(self.end, offset + len(data))

    def write_runs(self, b: int, at: int) -> None:
        """The changed runs of block ``b`` to the block's data at file offset ``at``."""
        base = b * self.block
        for start, end in self.per_block.get(b, ()):
            for offset, length in chunks([(start, end - start)], WRITE_CHUNK):
                self.put(at + offset - base, self._read(self.read_merged, offset, length))
                self.data_bytes += length

    def write_whole(self, b: int, at: int) -> None:
        """Block ``b`` whole: the merged disk's bytes, zeros past the parent's end without asking for them."""
        start, end = self.span(b)
        position = start
        for run_start, run_end in [*self.per_block.get(b, ()), (end, end)]:
            for offset, length in chunks([(position, run_start - position)], WRITE_CHUNK):
                inside = max(0, min(offset + length, self.parent.virtual_size) - offset)
                if inside:
                    self.put(at + offset - start, self._read(self.read_merged, offset, inside))
                if length > inside:
                    self.put(at + offset + inside - start, zeros(length - inside))
                self.data_bytes += length
            position = run_end
        self.write_runs(b, at)

    @staticmethod
    def _read(reader, offset: int, length: int) -> bytes:
        data = reader(offset, length)
        if len(data) != length:
            raise LayoutError(f"reading {length} bytes at {offset} returned {len(data)}")
        return data

    def finish(self, file_size: int) -> None:
        """Make the file ``file_size`` long: zeros over its unwritten tail (a sink has no truncate)."""
        if self.end < file_size:
            tail = max(self.end, file_size - 4 * KiB)
            self.put(tail, zeros(file_size - tail))


def set_bits(bitmap: bytearray, first: int, count: int, *, msb_first: bool) -> None:
    """Set ``count`` bits from bit ``first``; whole bytes at once."""
    bit, end = first, first + count
    while bit < end and bit % 8:
        bitmap[bit // 8] |= (0x80 >> bit % 8) if msb_first else (1 << bit % 8)
        bit += 1
    whole = (end - bit) // 8
    if whole > 0:
        bitmap[bit // 8:bit // 8 + whole] = b"\xff" * whole
        bit += 8 * whole
    while bit < end:
        bitmap[bit // 8] |= (0x80 >> bit % 8) if msb_first else (1 << bit % 8)
        bit += 1
