"""The appliance the guest tests share: libguestfs launches cost 13-25 s here, so every openable sample disk (and
the Server 2016 sample in every other format) is attached to ONE read-only appliance per session
(tests/guest/conftest.py)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ce import disks
from ce.errors import CeError
from ce.guest import Drive, Guest, WindowsRoot

from .files import writable_child


class SharedAppliance:
    """One read-only appliance with every openable disk of ``paths`` attached; the others' errors in ``open_errors``."""

    def __init__(self, paths: dict[str, str]):
        self.infos: dict[str, disks.DiskInfo] = {}
        self.open_errors: dict[str, CeError] = {}
        for name, path in paths.items():
            try:
                self.infos[name] = disks.info(path)
            except CeError as exc:
                self.open_errors[name] = exc
        names = list(self.infos)
        self.guest = Guest([Drive(self.infos[n].path, self.infos[n].format, readonly=True) for n in names])
        self.guest.launch()
        self.device = dict(zip(names, self.guest.devices()))


@contextmanager
def writable_windows(sample, work: Path) -> Iterator[tuple[Guest, WindowsRoot]]:
    """A writable qcow2 child of ``sample`` (the sample is never written) in its own appliance, with the Windows
    volume mounted read-write: (guest, root)."""
    with writable_child(sample, work) as child, Guest([Drive(child, "qcow2", readonly=False)]) as guest:
        root = guest.windows_root()
        guest.mount_windows(root, readonly=False)
        yield guest, root
