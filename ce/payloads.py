"""The payload store: installers and driver files that prepare copies into an image.

A store is a directory with ``manifest.json``::

    {"payloads": [{"component": "vda-installer", "version": "2203.0.6000.9", "file": "VDAServerSetup.exe",
                   "sha256": "...", "size": 123, "arch": "amd64"}]}

A component may have several files (a driver is ``.sys`` + ``.inf`` + ``.cat``). Every file is checked against
its manifest size and sha256 before it is used, so a truncated or swapped installer never reaches an image.

Which store: on the command line, any directory a step's ``payloads`` param names (or ``$CE_PAYLOADS``). Over the
server, only the store of its bootstrap (``payloads``): a step's ``params.payloads`` may name that directory or be
left out, anything else is refused at submit (``payload_store_refused``, naming the field), and with no store in the
bootstrap every ``params.payloads`` is -- a request must not make the service read a manifest and installers from
any directory it can see. The server gives each step's process ``$CE_PAYLOADS`` (empty when it has no store), and
while it is set ``PayloadStore`` opens no other directory, whoever asks.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import PayloadMismatch, PayloadMissing, PayloadStoreInvalid, PayloadStoreRefused
from .registry import sha256_file

MANIFEST = "manifest.json"
SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ ()+-]{0,127}$")
STORE_ENV = "CE_PAYLOADS"          # the one store allowed (set by the server from its bootstrap; empty: none)
PARAM = "payloads"                 # a step param of this name names a payload store directory


def confine(requested: str | Path, store: str | Path | None) -> None:
    """Refuse ``requested`` unless it is ``store`` itself (after resolving symlinks); with no store, refuse it."""
    if not store:
        raise PayloadStoreRefused(f"params.{PARAM}: this service has no payload store (its bootstrap sets no "
                                  f"'payloads'), and a step may not name a directory of its own; leave "
                                  f"params.{PARAM} out")
    try:
        same = os.path.realpath(requested) == os.path.realpath(store)
    except (ValueError, OSError):       # a NUL byte, a loop of symlinks
        same = False
    if not same:
        raise PayloadStoreRefused(f"params.{PARAM}: a step may use only this service's payload store (its "
                                  f"bootstrap's 'payloads'), not another directory; leave params.{PARAM} out")


def confined_store(requested: str | Path) -> None:
    """While ``$CE_PAYLOADS`` is set (a step the server runs), refuse any store but that one."""
    if STORE_ENV in os.environ:
        confine(requested, os.environ[STORE_ENV])


def open_store(requested: str | None, needed_by: str) -> "PayloadStore":
    """The store a step uses: ``requested`` (params.payloads) or ``$CE_PAYLOADS``; a requested directory that is
    not the configured store is refused, and so is having neither."""
    configured = os.environ.get(STORE_ENV)
    if configured and requested and os.path.realpath(requested) != os.path.realpath(configured):
        raise PayloadStoreInvalid(f"params.{PARAM} names another directory than the payload store this service is "
                                  "configured with; leave it out")
    root = requested or configured
    if not root:
        raise PayloadStoreInvalid(f"{needed_by} needs installers from a payload store: give params.{PARAM} (a "
                                  f"directory with manifest.json) or set {STORE_ENV}")
    return PayloadStore(root)


@dataclass(frozen=True)
class Payload:
    component: str
    version: str
    file: str
    sha256: str
    size: int
    arch: str
    path: Path

    def describe(self) -> str:
        return f"{self.component} {self.version} ({self.file})"


class PayloadStore:
    def __init__(self, root: str | Path):
        confined_store(root)
        self.root = Path(root)
        self.payloads = self._load()

    def _load(self) -> list[Payload]:
        manifest = self.root / MANIFEST
        try:
            entries = json.loads(manifest.read_text())["payloads"]
        except FileNotFoundError:
            raise PayloadStoreInvalid(f"payload store {self.root} has no {MANIFEST}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PayloadStoreInvalid(f"{manifest} is not a valid manifest ({exc})") from None
        return [self._entry(e, i) for i, e in enumerate(entries)]

    def _entry(self, entry: dict, index: int) -> Payload:
        try:
            name, digest = str(entry["file"]), str(entry["sha256"]).lower()
            payload = Payload(component=str(entry["component"]), version=str(entry["version"]), file=name,
                              sha256=digest, size=int(entry["size"]), arch=str(entry.get("arch", "amd64")),
                              path=self.root / name)
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadStoreInvalid(f"{self.root / MANIFEST}: entry {index} lacks or mistypes {exc}") from None
        if not SAFE_FILE.match(name) or name in (".", ".."):
            raise PayloadStoreInvalid(f"{self.root / MANIFEST}: entry {index} file {name!r} must be a plain file "
                                      f"name inside the store")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise PayloadStoreInvalid(f"{self.root / MANIFEST}: entry {index} sha256 is not 64 hex digits")
        return payload

    def find(self, component: str, version: str | None = None, arch: str | None = None) -> list[Payload]:
        """Every file of a component (at a version / arch); PayloadMissing names what the store does have."""
        found = [p for p in self.payloads if p.component == component
                 and (version is None or p.version == version) and (arch is None or p.arch == arch)]
        if not found:
            have = sorted({p.version for p in self.payloads if p.component == component})
            wanted = f"{component}" + (f" version {version}" if version else "") + (f" ({arch})" if arch else "")
            raise PayloadMissing(f"payload store {self.root} has no {wanted}"
                                 + (f"; it has version(s) {', '.join(have)}" if have else ""))
        return found

    def verified(self, payload: Payload) -> Path:
        """The payload's path after checking its size and sha256 against the manifest."""
        try:
            size = payload.path.stat().st_size
        except OSError:
            raise PayloadMissing(f"{payload.describe()} is in the manifest but {payload.path} is missing") from None
        if size != payload.size:
            raise PayloadMismatch(f"{payload.path} is {size} bytes, the manifest says {payload.size}: "
                                  f"truncated or replaced")
        digest = sha256_file(payload.path)
        if digest != payload.sha256:
            raise PayloadMismatch(f"{payload.path} has sha256 {digest}, the manifest says {payload.sha256}: "
                                  f"corrupt or replaced")
        return payload.path


def write_manifest(root: Path, entries: list[dict]) -> None:
    """Make a store from files already in ``root``: entries give component, version, file (and arch)."""
    full = [{**e, "size": (root / e["file"]).stat().st_size, "sha256": sha256_file(root / e["file"]),
             "arch": e.get("arch", "amd64")} for e in entries]
    (root / MANIFEST).write_text(json.dumps({"payloads": full}, indent=2) + "\n")
