"""Shared fixtures. libguestfs launches cost 13-25 s here, so sample disks share one appliance per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ce import disks
from ce.errors import CeError
from ce.guest import Drive, Guest
from images.build import build
from images.spec import Spec
from tests.smbserver import SambaServer, fresh_folder

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
MiB = 1 << 20


@pytest.fixture(scope="session")
def samples() -> dict[str, Spec]:
    """Every sample image, built if missing or stale (cached in images/build/)."""
    return {spec.name: spec for spec in build(say=lambda *_: None)}


class SharedAppliance:
    """One read-only appliance with every openable sample disk (and a few extra formats) attached."""

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


@pytest.fixture(scope="session")
def extra_formats(samples, tmp_path_factory) -> dict[str, str]:
    """The Server 2016 sample converted to every other format ce accepts."""
    src = samples["win2016-vda1912"]
    out = tmp_path_factory.mktemp("formats")
    variants = {}
    for fmt, subformat in (("raw", None), ("vpc", "fixed"), ("vpc", "dynamic"), ("vmdk", "monolithicSparse"),
                           ("vhdx", None)):
        dst = out / f"win2016.{fmt}{'-' + subformat if subformat else ''}"
        disks.convert(str(src.path), str(dst), fmt, src_fmt=src.format, subformat=subformat)
        variants[f"win2016-as-{dst.suffix[1:]}"] = str(dst)
    return variants


@pytest.fixture(scope="session")
def appliance(samples, extra_formats):
    paths = {name: str(spec.path) for name, spec in samples.items()}
    shared = SharedAppliance({**paths, **extra_formats})
    yield shared
    shared.guest.close()


# ---------------------------------------------------------------- Samba (each SMB test module defines ``samba``)

@pytest.fixture(scope="module")
def full_samba(tmp_path_factory):
    """A share whose files cannot grow past 4 MiB: writes beyond fail with STATUS_DISK_FULL."""
    with SambaServer(tmp_path_factory.mktemp("samba-full"), file_size_limit=4 * MiB) as server:
        yield server


@pytest.fixture
def folder(samba, request) -> Path:
    """A fresh folder on the module's ``samba`` share for one test (its path on the Samba side)."""
    return fresh_folder(samba, request.node.name)
