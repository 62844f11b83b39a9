r"""A vDisk on an SMB share edited without writing it: the edits become a differencing child written beside it.

PVS keeps every version of a vDisk as a differencing child of the one before, and running targets read the
parent, so the operations on PVS vDisks (convertToUefi, upgradePvs) must not write one byte of it. The parent is
served read-only from the share over NBD (``ce.nbdexport``: nothing of it is copied locally) and a local qcow2
overlay of it takes the guest's edits; the overlay may be larger than the parent. Once the edits are done, the
overlay's own clusters (``qemu-img map``: depth 0 and present, zeros written included) are the changed extents;
``ce.disks.differencing`` writes them into a VHDX (or VHD) child in scratch space -- only as large as the changes --
read through qemu-nbd (libnbd), which shows the merged disk. The child then goes to the share as ``NAME.partial``,
is read back there (its headers must name the parent, its bytes must hash as the local file's) and renamed to
``NAME``; a failure at any point leaves nothing at ``NAME`` and the parent as it was.

    with opened_parent(location, "base.vhdx", scratch) as parent:
        overlay = parent.overlay(scratch / "edits.qcow2", parent.facts.virtual_size + grow)
        ... launch a guest on the overlay (qcow2), edit, close it ...
        child = parent.write_child(overlay, scratch / "child", "base-uefi.vhdx")
        parent.upload_child(child, "base-uefi.vhdx", overwrite=False)
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from . import disks, faults, nbdexport
from .disks import qemuimg
from .disks.differencing import ChildSummary, FileSink, ParentFacts, parent_facts, write_child
from .disks.headers import VHDX_REGION_TABLE, vhd_dynamic_header, vhdx_regions
from .errors import ChildDiskFailed, ConversionFailed

if TYPE_CHECKING:                        # annotations only: the SMB byte path is imported when a share is opened
    from .smb import RemoteStat, SmbShare

READ_CHUNK = 8 << 20                     # qemu-nbd serves up to 32 MiB a request; 8 MiB keeps memory small
CHILD_EXTENSIONS = {"vhdx": (".vhdx", ".avhdx"), "vpc": (".vhd", ".avhd")}


@dataclass
class LocalChild:
    """A child written in scratch space: its path, what it holds and the sha256 of its bytes."""
    path: Path
    summary: ChildSummary
    sha256: str
    virtual_size: int


class MergedReader:
    """The merged view of a qcow2 overlay (its clusters, else its backing file), read through qemu-nbd with
    libnbd: qemu remains the only reader of the parent's format."""

    def __init__(self, overlay: Path):
        import nbd                                      # python3-libnbd (Debian); only this path needs it
        self._handle = nbd.NBD()
        try:
            self._handle.connect_systemd_socket_activation(
                ["qemu-nbd", "--read-only", "--format=qcow2", os.fspath(overlay)])
        except nbd.Error as exc:
            raise ConversionFailed(f"cannot read the edited disk {overlay.name} through qemu-nbd: {exc}") from None
        self.size = self._handle.get_size()

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ConversionFailed(f"read of {length} bytes at {offset} is outside the {self.size}-byte disk")
        parts = []
        for start in range(offset, offset + length, READ_CHUNK):
            parts.append(self._handle.pread(min(READ_CHUNK, offset + length - start), start))
        return b"".join(parts)

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.shutdown()

    def __enter__(self) -> "MergedReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def changed_extents(overlay: Path) -> list[tuple[int, int]]:
    """The byte ranges the overlay holds itself: every cluster written since it was made, data or zeros."""
    out = qemuimg.run("map", "--output=json", "-f", "qcow2", os.fspath(overlay), fails_as=ConversionFailed,
                      doing=f"cannot list the changed extents of {overlay.name}")
    extents = []
    for entry in json.loads(str(out)):
        if entry.get("depth") == 0 and entry.get("present", entry.get("data") or entry.get("zero")):
            start, length = int(entry["start"]), int(entry["length"])
            if extents and extents[-1][0] + extents[-1][1] == start:
                extents[-1] = (extents[-1][0], extents[-1][1] + length)
            else:
                extents.append((start, length))
    return extents


@dataclass
class ShareParent:
    """A vDisk on a share, served read-only over NBD while the block that opened it runs."""
    share: SmbShare
    name: str
    stat: RemoteStat
    facts: ParentFacts
    export: nbdexport.ChildExport          # served by another process: a guest launch holds the GIL

    @property
    def absolute_path(self) -> str:
        r"""The parent as Windows names it on the share: ``\\?\UNC\host\share\folder\name``."""
        where = self.share.location
        return "\\".join(p for p in (r"\\?\UNC", where.host, where.share, where.folder, self.name) if p)

    def overlay(self, path: Path, size: int) -> Path:
        """A local qcow2 of ``size`` bytes (at least the parent's) over the served parent: the guest edits it."""
        if size < self.facts.virtual_size:
            raise ChildDiskFailed(f"the edited disk ({size} bytes) cannot be smaller than {self.name} "
                                  f"({self.facts.virtual_size} bytes)")
        disks.create_overlay(self.export.uri, self.facts.format, path, size)
        return path

    def write_child(self, overlay: Path, path: Path, child_name: str, *, virtual_size: int | None = None) -> LocalChild:
        """The overlay's changes as a differencing child of this parent, written to ``path`` in scratch space; the
        child's disk is ``virtual_size`` bytes (default: the overlay's), and nothing may have changed past it."""
        require_child_name(self.facts.format, child_name)
        with self.export.raising_share_errors(), MergedReader(overlay) as merged, open(path, "wb") as f:
            size = merged.size if virtual_size is None else virtual_size
            extents = changed_extents(overlay)
            beyond = [e for e in extents if e[0] + e[1] > size]
            if size > merged.size or beyond:
                raise ChildDiskFailed(f"the edits reach past the child's {size} bytes (at {beyond[:1]}) or the "
                                      f"child is larger than the edited disk ({merged.size} bytes)")
            faults.checkpoint("child-write")
            summary = write_child(self.facts, extents, merged.read_at, FileSink(f), parent_name=self.name,
                                  parent_absolute=self.absolute_path,
                                  virtual_size=size if self.facts.format == "vhdx" else None)
            f.flush()
            os.fsync(f.fileno())
        return LocalChild(path, summary, file_sha256(path), size)

    def upload_child(self, child: LocalChild, name: str, *, overwrite: bool, progress=None,
                     cancel=None) -> RemoteStat:
        """``child`` to ``name`` beside the parent, through ``NAME.partial``: read back on the share before it is
        renamed -- a child of this parent, of the planned size, its structure (headers, region tables, metadata,
        block table; the VHD footer) byte-identical to what was written. The data blocks are not read back: SMB
        signing already guarantees the server got the bytes sent, and reading them all again cost 4 times the
        upload (bench/child.py)."""
        def verify(reader) -> None:
            fmt, kind, virtual = disks.header_facts(reader.read_at, reader.size)
            if (fmt, kind, virtual) != (self.facts.format, "differencing", child.virtual_size):
                raise ChildDiskFailed(f"{name} reads back on the share as a {fmt} {kind} disk of {virtual} bytes, "
                                      f"not the {self.facts.format} child of {child.virtual_size} bytes written")
            with open(child.path, "rb") as local:
                for offset, length in structure_ranges(local, self.facts.format):
                    if reader.read_at(offset, length) != os.pread(local.fileno(), length, offset):
                        raise ChildDiskFailed(f"{name} reads back on the share with other bytes than were written "
                                              f"(at {offset})")
            faults.checkpoint("child-rename")                # complete and verified, not yet renamed
        return self.share.upload(child.path, name, overwrite=overwrite, progress=progress, cancel=cancel,
                                 verify=verify)

    def unchanged(self) -> bool:
        """The parent still has the size, time and identifier it had when opened (nothing wrote it meanwhile)."""
        now = self.share.stat(self.name)
        return (now.size, now.modified) == (self.stat.size, self.stat.modified)


@contextmanager
def opened_parent(location, name: str, scratch: Path) -> Iterator[ShareParent]:
    """Open ``name`` in ``location`` (a ce.smb StorageLocation) as a parent: its facts read from its headers
    (a parent that is itself a child is refused), served read-only over NBD until the block ends."""
    with location.share() as share:
        stat = share.stat(name)
        with share.open_read(name) as reader:
            facts = parent_facts(reader.read_at, stat.size, mtime=stat.modified.timestamp())
        with nbdexport.serving_in_child(location, name, scratch) as export, export.raising_share_errors():
            yield ShareParent(share, name, stat, facts, export)


def structure_ranges(local, fmt: str) -> list[tuple[int, int]]:
    """The (offset, length) ranges of a child file that hold its structure rather than disk data: for a VHDX
    everything up to the end of the block table (headers, log, region tables, metadata, BAT: ce's writer puts them
    first); for a VHD the footer copy, dynamic header and block table at the start, and the footer at the end."""
    size = os.fstat(local.fileno()).st_size
    read_at = lambda offset, length: os.pread(local.fileno(), length, offset)   # noqa: E731
    if fmt == "vhdx":
        regions = vhdx_regions(read_at(VHDX_REGION_TABLE, 64 << 10)) or {}
        ends = [offset + length for offset, length in regions.values()]
        return [(0, min(max(ends, default=size), size))]
    footer = read_at(size - 512, 512)
    bat_offset, entries, _ = vhd_dynamic_header(read_at, footer)
    return [(0, bat_offset + entries * 4), (size - 512, 512)]


def require_child_name(fmt: str, name: str) -> None:
    """A VHDX parent gets a .vhdx / .avhdx child, a VHD parent a .vhd / .avhd one (the child's format follows
    its parent's: Windows opens a chain of one format only)."""
    if not name.lower().endswith(CHILD_EXTENSIONS[fmt]):
        raise ChildDiskFailed(f"the child of a {disks.FORMAT_LABELS[fmt]} parent is a "
                              f"{disks.FORMAT_LABELS[fmt]} too: name it {' or '.join(CHILD_EXTENSIONS[fmt])}, "
                              f"not {name!r}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_CHUNK):
            digest.update(block)
    return digest.hexdigest()
