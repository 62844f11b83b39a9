"""Change kinds of the disk steps: a disk read in place, a disk file written, a disk's contents hashed.

A disk step's plan lists these like a guest step's plan lists registry values, so ``ce plan``, ``dryRun`` over the
API and ``ce run`` show one shape for every step. The bytes are moved by the step's own apply (streaming,
qemu-img, an upload); the kinds describe what will be, and was, done.
"""
from __future__ import annotations

from typing import Literal

from ..document import Document

from ..sizes import human_size

WRITE_METHODS = {"stream": "by streaming into the container", "convert": "with qemu-img",
                 "convert_then_upload": "converted locally, then uploaded", "write": "block by block",
                 "differencing_child": "as a differencing child (its changes only; the parent is never written)"}


class DiskChange(Document):
    """A disk's shape as a plan states it: format, subformat, virtual size."""
    format: str
    subformat: str | None = None
    virtual_size: int | None = None
    reason: str = ""

    def shape(self) -> str:
        size = f", {human_size(self.virtual_size)} virtual" if self.virtual_size is not None else ""
        return f"{self.format.upper()}{' ' + self.subformat if self.subformat else ''}{size}"


class DiskRead(DiskChange):
    kind: Literal["disk_read"] = "disk_read"
    source: str                            # a local path, or \\host\share\folder\file
    in_place: bool = False                 # a file on a share served over a local NBD socket, never copied

    def describe(self) -> str:
        how = " in place over SMB" if self.in_place else ""
        return f"read   {self.source} ({self.shape()}){how}"


class DiskWrite(DiskChange):
    kind: Literal["disk_write"] = "disk_write"
    target: str                            # a local path, or \\host\share\folder\file
    source: str
    method: Literal["stream", "convert", "convert_then_upload", "write", "differencing_child"]
    replaces_existing: bool = False

    def describe(self) -> str:
        replacing = ", replacing the existing file" if self.replaces_existing else ""
        return f"write  {self.target} ({self.shape()}) from {self.source} {WRITE_METHODS[self.method]}{replacing}"


class DiskHash(Document):
    kind: Literal["disk_hash"] = "disk_hash"
    disk: str
    of: Literal["content", "file"] = "content"
    algorithms: list[str]
    expected: dict[str, str] = {}
    reason: str = ""

    def describe(self) -> str:
        what = "contents" if self.of == "content" else "file bytes"
        check = f", expecting {', '.join(sorted(self.expected))}" if self.expected else ""
        return f"hash   the {what} of {self.disk} ({', '.join(self.algorithms)}{check})"



class BundleWrite(Document):
    """A file of logs and data written to a share (the diagnostics zip): what goes in, how big, where."""
    kind: Literal["bundle_write"] = "bundle_write"
    target: str                            # \\host\share\folder\file.zip
    source: str | None = None              # the disk read (read-only), when the image's side is collected
    files: int                             # members planned, generated ones (summary, manifest, reports) included
    bytes: int                             # their planned uncompressed size
    left_out: int = 0                      # sources left out (caps, never collected, not selected)
    reason: str = ""

    def describe(self) -> str:
        source = f" from {self.source} (read-only) and ce's own logs" if self.source else " from ce's own logs"
        left = f", {self.left_out} source(s) left out" if self.left_out else ""
        return f"write  {self.target} ({self.files} files, {human_size(self.bytes)} before compression){source}{left}"
