"""The other files a disk image's header tells qemu to open -- a qcow2 backing file or external data file, a VMDK's
extents and parent -- read by hand, before qemu-img or libguestfs opens the image.

qemu follows these names wherever they point: any local file the service can read (``/etc/shadow``), another
protocol (``nbd://host:port`` opens a TCP connection), a ``json:{...}`` target. Whatever it reads then travels on
as the disk's own bytes -- into a hash, a converted image, an export to a share. An attached disk's header is
written by whoever made the image, so it is hostile input like any other part of its contents.

Two policies, set once per process (``restrict_to``):

* **local** (the default: ``ce`` on an operator's machine): chains a local user made are followed -- the README's
  own overlay workflow relies on it -- and each one is logged as a warning, so the user sees what is read;
* **attached only** (``ce serve`` and its step workers): every file of a chain must itself be one of the attached
  disks of the bootstrap; a protocol, a ``json:`` target or any other file is refused (``disk_chain_refused``)
  before qemu opens anything.

Images on a share (read over NBD) never have a chain: their parent is not part of the job (``refuse_any``).

What qemu 7.2 opens, and so what is read here:

* qcow2 (and qcow v1): the backing file name (header offset 8, length at 16) and the external data file name
  (header extension 0x44415441); a data-file bit without a name makes qemu refuse the image on its own.
* VMDK: a text descriptor's extent lines (``RW 2048 FLAT "disk-flat.vmdk" 0``; ZERO extents name no file) and
  ``parentFileNameHint``; a sparse extent (``KDMV``) opens only itself, plus its embedded descriptor's
  ``parentFileNameHint``. qemu takes a file as a VMDK descriptor when its first line that is not a ``#`` comment
  or blank starts with ``version=`` (block/vmdk.c, vmdk_probe), the same test as here.
* VHD / VHDX differencing parents are not opened by qemu (it reads them as if the parent were zeros), so they are
  not references; ``probe.refuse_differencing`` refuses them for that reason.
"""
from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass
from typing import Callable, Iterable

from ..errors import DiskChainRefused, DiskUnreadable
from .extents import byte_size
from .extents import read_at as read_file_at

log = logging.getLogger(__name__)

QCOW_MAGIC = b"QFI\xfb"
QCOW_DATA_FILE_EXTENSION = 0x44415441
QCOW_BACKING_FORMAT_EXTENSION = 0xE2792ACA
QCOW_EXTERNAL_DATA_BIT = 1 << 2
VMDK_SPARSE_MAGIC = b"KDMV"
DESCRIPTOR_LIMIT = 1 << 20              # qemu refuses VMDK descriptors larger than this too
PROBE_BYTES = 2048                      # what qemu's format probes look at
MAX_DEPTH = 16                          # files in one chain
EXTENT = re.compile(r'^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+(\w+)(?:\s+"([^"]*)")?', re.MULTILINE)
PARENT_HINT = re.compile(r'^\s*parentFileNameHint\s*=\s*"([^"]*)"', re.MULTILINE)


@dataclass(frozen=True)
class Reference:
    kind: str                       # "backing file", "external data file", "extent", "parent"
    name: str                       # as the header writes it
    format: str | None = None       # the backing format a qcow2 names (qemu probes the file without one)

    @property
    def is_protocol(self) -> bool:
        """qemu's path_has_protocol: a ``name:`` before the first ``/`` (``nbd:``, ``json:``, ``file:``...)."""
        head = self.name.split("/", 1)[0]
        return ":" in head

    def resolve(self, image: str) -> str | None:
        """The real path qemu would open (relative names are relative to the image's directory); None for a
        protocol or a name that is not a path."""
        if self.is_protocol or not self.name or "\0" in self.name:
            return None
        return os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(image)), self.name))

    def describe(self) -> str:
        return f"{self.kind} {self.name!r}"


# ---------------------------------------------------------------- what a header names

def references(read_at: Callable[[int, int], bytes], size: int) -> list[Reference]:
    """The files the image read through ``read_at(offset, length)`` (``size`` bytes) makes qemu open."""
    head = read_at(0, PROBE_BYTES)
    if head[:4] == QCOW_MAGIC:
        return _qcow_references(read_at, head, size)
    if head[:4] == VMDK_SPARSE_MAGIC:
        return _sparse_vmdk_references(read_at, size)
    if is_vmdk_descriptor(head):
        text = read_at(0, min(size, DESCRIPTOR_LIMIT)).decode("utf-8", "replace")
        return _descriptor_references(text, extents=True)
    return []


def is_vmdk_descriptor(head: bytes) -> bool:
    """qemu's test for a VMDK text descriptor (a little wider: any blank line is skipped)."""
    for line in head.split(b"\n"):
        stripped = line.strip(b" \t\r")
        if stripped.startswith(b"#") or not stripped:
            continue
        return stripped.startswith(b"version=")
    return False


def _qcow_references(read_at, head: bytes, size: int) -> list[Reference]:
    if len(head) < 72:
        raise DiskUnreadable("its qcow2 header is truncated")
    version, backing_offset, backing_size, cluster_bits = struct.unpack_from(">IQII", head, 4)
    found: list[Reference] = []
    extensions = _qcow_extensions(read_at, head, version, cluster_bits) if version >= 2 else {}
    if backing_offset and backing_size:
        name = (read_at(backing_offset, min(backing_size, 4096)) if backing_offset < size else b"").decode(
            "utf-8", "replace")
        fmt = extensions.get(QCOW_BACKING_FORMAT_EXTENSION)
        found.append(Reference("backing file", name, fmt.decode("ascii", "replace") if fmt else None))
    if QCOW_DATA_FILE_EXTENSION in extensions:
        found.append(Reference("external data file", extensions[QCOW_DATA_FILE_EXTENSION].decode("utf-8",
                                                                                                   "replace")))
    elif version >= 3 and struct.unpack_from(">Q", head, 72)[0] & QCOW_EXTERNAL_DATA_BIT:
        found.append(Reference("external data file", ""))
    return found


def _qcow_extensions(read_at, head: bytes, version: int, cluster_bits: int) -> dict[int, bytes]:
    """{type: data} of the header extensions, which end at the first cluster (qcow2 spec, "Header extensions")."""
    start = struct.unpack_from(">I", head, 100)[0] if version >= 3 and len(head) >= 104 else 72
    end = 1 << min(max(cluster_bits, 9), 21)
    block = read_at(0, end)
    found: dict[int, bytes] = {}
    offset = start
    while offset + 8 <= len(block):
        kind, length = struct.unpack_from(">II", block, offset)
        if kind == 0:
            break
        found.setdefault(kind, block[offset + 8:offset + 8 + length].rstrip(b"\0"))
        offset += 8 + -(-length // 8) * 8
    return found


def _sparse_vmdk_references(read_at, size: int) -> list[Reference]:
    """A sparse extent opens only itself, and its parent when its embedded descriptor names one."""
    header = read_at(0, 64)
    if len(header) < 44:
        raise DiskUnreadable("its VMDK header is truncated")
    offset, length = struct.unpack_from("<QQ", header, 28)
    if not offset or not length:
        return []
    text = read_at(offset * 512, min(length * 512, DESCRIPTOR_LIMIT)).split(b"\0", 1)[0]
    return _descriptor_references(text.decode("utf-8", "replace"), extents=False)


def _descriptor_references(text: str, *, extents: bool) -> list[Reference]:
    found = []
    if extents:
        found += [Reference("extent", name) for kind, name in EXTENT.findall(text) if kind.upper() != "ZERO"]
    found += [Reference("parent", name) for name in PARENT_HINT.findall(text) if name]
    return found


# ---------------------------------------------------------------- the policy

_attached: Callable[[], Iterable[str]] | None = None
_own: set[str] = set()                              # overlays this process made (made_here)
_told: set[tuple[str, Reference]] = set()           # chains already logged by this process


def restrict_to(attached: Callable[[], Iterable[str]] | Iterable[str] | None) -> None:
    """From now on, chains may only lead to ``attached`` (real paths, or a function returning them); None lifts
    the restriction (the local CLI's default)."""
    global _attached
    if attached is None or callable(attached):
        _attached = attached
    else:
        fixed = [os.path.realpath(p) for p in attached]
        _attached = lambda: fixed                      # noqa: E731


def restricted() -> bool:
    return _attached is not None


def made_here(path) -> None:
    """``path`` is an overlay this process made over a source it checked itself (an NBD export of an image on a
    share, which ``refuse_any`` vetted): its chain is ce's own, not the image-maker's."""
    _own.add(os.path.realpath(path))


def vet(path: str) -> list[str]:
    """Check the chain of the local image ``path`` against the policy before anything opens it; returns the real
    paths of the other files its chain reads (depth first)."""
    if os.path.realpath(path) in _own:
        return []
    allowed = set(_attached()) if _attached is not None else None
    chain = _walk(path, [os.path.realpath(path)], allowed)
    for image, ref in chain:
        if (image, ref) in _told:
            continue
        _told.add((image, ref))
        if allowed is None:
            log.warning("%s names %s: qemu reads it as part of the disk (a local chain; `ce serve` refuses chains "
                        "that leave its attached disks)", image, ref.describe())
        else:
            log.info("%s names %s, an attached disk: read as part of the disk", image, ref.describe())
    return list(dict.fromkeys(target for image, ref in chain if (target := ref.resolve(image))))


def _walk(path: str, seen: list[str], allowed: set[str] | None) -> list[tuple[str, Reference]]:
    try:
        size = byte_size(path)
        refs = references(lambda offset, length: read_file_at(path, offset, length), size)
    except OSError:
        return []                                       # the caller's own open reports a missing or unreadable disk
    chain = []
    for ref in refs:
        target = ref.resolve(path)
        if allowed is not None and (target is None or target not in allowed):
            raise DiskChainRefused(f"{path} names {ref.describe()}, which is not a disk attached to this CE: "
                                   "an image's chain may only lead to attached disks")
        chain.append((path, ref))
        if target is None or target in seen:
            continue
        if len(seen) >= MAX_DEPTH:
            raise DiskChainRefused(f"{path}'s chain is more than {MAX_DEPTH} files long")
        chain += _walk(target, [*seen, target], allowed)
    return chain


def refuse_any(read_at, size: int, what: str) -> None:
    """An image on a share names no other file: its parent or extents are not part of the job."""
    refs = references(read_at, size)
    if refs:
        raise DiskChainRefused(f"{what} names {refs[0].describe()}: an image on a share must be one file; merge "
                               "the chain into one image first")
