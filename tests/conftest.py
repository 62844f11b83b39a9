"""Shared fixtures. libguestfs launches cost 13-25 s here, so sample disks share one appliance per session."""
from __future__ import annotations

import os

import pytest

from ce import disks
from ce.errors import CeError
from ce.guest import Drive, Guest
from images.build import build
from images.spec import Spec

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")


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
