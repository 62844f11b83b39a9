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
while it is set ``PayloadStore`` opens no other directory, whoever asks; while the server validates a request's params
(``store_in_force``) its bootstrap's store is the one in force, whatever its own environment says.

Before the launch (a step's ``validate``), ``open_named`` opens the store a step names and the step stats every
candidate payload its options need (``present``), hashing only those the image has no say in; the image decides
the rest (which version, flavour or architecture), and every file is verified again, size and sha256, right before
it is copied.
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import PayloadError, PayloadMismatch, PayloadMissing, PayloadStoreInvalid, PayloadStoreRefused
from .registry import sha256_file

MANIFEST = "manifest.json"
SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ ()+-]{0,127}$")
STORE_ENV = "CE_PAYLOADS"          # the one store allowed (set by the server from its bootstrap; empty: none)
PARAM = "payloads"                 # a step param of this name names a payload store directory

_in_force: ContextVar[str | None] = ContextVar("ce_payloads", default=None)


def configured_store() -> str | None:
    """The store steps are confined to here: ``store_in_force``'s, else ``$CE_PAYLOADS``; '' none at all, None any
    directory (the command line)."""
    forced = _in_force.get()
    return forced if forced is not None else os.environ.get(STORE_ENV)


@contextmanager
def store_in_force(root: str | Path | None) -> Iterator[None]:
    """Inside, the configured store is ``root`` (None: none), whatever the environment says: the server validating a
    request's params in its own process, where ``$CE_PAYLOADS`` is not the step's."""
    token = _in_force.set(str(root or ""))
    try:
        yield
    finally:
        _in_force.reset(token)


def store_named(requested: str | None) -> bool:
    """Whether a step has a store at all: its params.payloads or the configured one."""
    return bool(requested or configured_store())


@contextmanager
def about(param: str) -> Iterator[None]:
    """A payload refusal raised inside is about ``params.<param>``: its message starts so, and the server reports
    it as the error's field."""
    try:
        yield
    except PayloadError as exc:
        if getattr(exc, "field", None) is None:
            exc.field = param
            if f"params.{param}" not in exc.message:
                exc.args = (f"params.{param}: {exc.message}", *exc.args[1:])
        raise


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
    """While a store is configured (a step the server runs, or validates), refuse any store but that one."""
    configured = configured_store()
    if configured is not None:
        confine(requested, configured)


def open_store(requested: str | None, needed_by: str) -> "PayloadStore":
    """The store a step uses: ``requested`` (params.payloads) or ``$CE_PAYLOADS``; a requested directory that is
    not the configured store is refused, and so is having neither."""
    configured = configured_store()
    if configured and requested and os.path.realpath(requested) != os.path.realpath(configured):
        raise PayloadStoreInvalid(f"params.{PARAM} names another directory than the payload store this service is "
                                  "configured with; leave it out")
    root = requested or configured
    if not root:
        raise PayloadStoreInvalid(f"{needed_by} needs installers from a payload store: give params.{PARAM} (a "
                                  f"directory with manifest.json) or set {STORE_ENV}")
    return PayloadStore(root)


def open_named(requested: str | None) -> "PayloadStore | None":
    """Before a launch: the store a step names (params.payloads, or the configured one) with its manifest read,
    every refusal naming params.payloads; None when it names none (the image may need nothing from one)."""
    if not store_named(requested):
        return None
    with about(PARAM):
        return open_store(requested, "this step")


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
        if not self.root.is_dir():
            raise PayloadStoreInvalid(f"payload store {self.root} is not a directory (missing, or not readable)")
        try:
            entries = json.loads(manifest.read_text())["payloads"]
        except FileNotFoundError:
            raise PayloadStoreInvalid(f"payload store {self.root} has no {MANIFEST}") from None
        except OSError as exc:
            raise PayloadStoreInvalid(f"cannot read {manifest} ({exc.strerror or exc})") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise PayloadStoreInvalid(f"{manifest} is not a valid manifest ({exc})") from None
        if not isinstance(entries, list):
            raise PayloadStoreInvalid(f"{manifest} is not a valid manifest (\"payloads\" must be a list)")
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

    def find_any(self, components: tuple[str, ...]) -> list[Payload]:
        """Every file of any of ``components``; PayloadMissing when the store has none of them."""
        found = [p for p in self.payloads if p.component in components]
        if not found:
            raise PayloadMissing(f"payload store {self.root} has no {' or '.join(components)}")
        return found

    def present(self, payload: Payload) -> Path:
        """The payload's path after checking that it is a file of the manifest's size (a stat: no reading)."""
        if not payload.path.is_file():
            raise PayloadMissing(f"{payload.describe()} is in the manifest but {payload.path} is missing")
        size = payload.path.stat().st_size
        if size != payload.size:
            raise PayloadMismatch(f"{payload.path} is {size} bytes, the manifest says {payload.size}: "
                                  f"truncated or replaced")
        return payload.path

    def verified(self, payload: Payload) -> Path:
        """The payload's path after checking its size and sha256 against the manifest."""
        self.present(payload)
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
