"""The diagnostics zip, written locally in scratch space (the step uploads it as ``NAME.partial`` and renames it):
ZIP64 throughout (``allowZip64``; a member of 4 GiB or more and a bundle of 65535 members or more need it), every
member deflated, and a ``manifest.json`` written last that lists each member with its source, size and sha256 and
names every cap that cut something.

Caps count uncompressed bytes, so the plan can say what they will cut before anything is read: ``max_file`` per
member, ``max_bundle`` for all members together. A text log over ``max_file`` keeps its newest bytes (its tail);
any other file over it is left out whole (half an .evtx or a dump is worse than none), and so is a file that no
longer fits the bundle. The manifest's ``sha256`` is always of the bytes in the bundle; ``source_sha256`` is the
source's as read where it lives (they are equal for every copy that was not cut).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..document import SCHEMA_VERSION, camel_keys

MANIFEST = "manifest.json"
SUMMARY = "summary.txt"
TAIL_SUFFIXES = (".log", ".txt", ".xml", ".jsonl")      # text whose newest part is its end
RESERVED = 4 << 20                 # kept free under the bundle cap for the summary, the manifest and reports


@dataclass
class Entry:
    """One row of the manifest: a member of the bundle, or a source left out (``path`` empty)."""
    path: str                      # name in the zip ("" when left out)
    source: str                    # where it came from: a Windows path, "ce:step store", "generated", ...
    group: str                     # ceLogs | windowsEventLogs | ipsData | summary
    size: int                      # bytes in the bundle
    sha256: str = ""
    source_size: int | None = None
    source_sha256: str = ""
    cut: str = ""                  # what a cap (or a reason) did to it: "" | "tail: ..." | "left out: ..."

    def row(self) -> dict:
        return camel_keys({k: v for k, v in asdict(self).items() if v not in ("", None) or k in ("path", "size")})


def decide(name: str, size: int, used: int, max_file: int, max_bundle: int) -> tuple[int, str]:
    """(bytes to keep, the cut) for a source of ``size`` bytes when ``used`` bytes are already planned."""
    room = max(max_bundle - RESERVED - used, 0)
    tail = name.lower().endswith(TAIL_SUFFIXES)
    keep, cut = size, ""
    if size > max_file:
        if not tail:
            return 0, f"left out: {size} bytes is over the per-file cap of {max_file}"
        keep, cut = max_file, f"tail: the newest {max_file} of {size} bytes (per-file cap)"
    if keep > room:
        if not tail or room < min(keep, 64 << 10):
            return 0, f"left out: the bundle cap of {max_bundle} bytes is reached"
        keep, cut = room, f"tail: the newest {room} of {size} bytes (bundle cap)"
    return keep, cut


@dataclass
class Bundle:
    path: Path
    max_file: int
    max_bundle: int
    entries: list[Entry] = field(default_factory=list)
    used: int = 0

    def __post_init__(self) -> None:
        self.zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.zip.close()

    def add_bytes(self, name: str, data: bytes, *, source: str, group: str) -> Entry:
        """A generated member (a report, a store document, the summary): never cut, counted against the cap."""
        info = zipfile.ZipInfo(name, time.gmtime()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        self.zip.writestr(info, data)
        return self._add(Entry(path=name, source=source, group=group, size=len(data),
                               sha256=hashlib.sha256(data).hexdigest()))

    def add_file(self, name: str, local: Path, *, source: str, group: str, source_size: int, source_sha256: str,
                 cut: str = "") -> Entry:
        """A copied file (its local copy holds exactly the bytes to store)."""
        digest = hashlib.sha256()
        info = zipfile.ZipInfo(name, time.gmtime()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        with open(local, "rb") as f, self.zip.open(info, "w", force_zip64=True) as out:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        return self._add(Entry(path=name, source=source, group=group, size=os.path.getsize(local),
                               sha256=digest.hexdigest(), source_size=source_size, source_sha256=source_sha256,
                               cut=cut))

    def left_out(self, source: str, group: str, size: int | None, why: str) -> Entry:
        entry = Entry(path="", source=source, group=group, size=0, source_size=size, cut=f"left out: {why}"
                      if not why.startswith("left out") else why)
        self.entries.append(entry)
        return entry

    def _add(self, entry: Entry) -> Entry:
        self.entries.append(entry)
        self.used += entry.size
        return entry

    def finish(self, about: dict) -> dict:
        """Write manifest.json (last member) and close; returns the manifest."""
        manifest = {"schemaVersion": SCHEMA_VERSION, **about, "caps": {"maxFileBytes": self.max_file, "maxBundleBytes":
                                                   self.max_bundle},
                    "files": [e.row() for e in self.entries if e.path],
                    "leftOut": [e.row() for e in self.entries if not e.path],
                    "cut": [e.path for e in self.entries if e.path and e.cut]}
        self.add_bytes(MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), source="generated",
                       group="summary")
        self.zip.close()
        return manifest


def check(path: Path) -> int:
    """Re-read every member's CRC; returns the member count. Raises ValueError naming a bad member."""
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
        if bad is not None:
            raise ValueError(f"member {bad} of {path.name} does not read back")
        return len(z.namelist())
