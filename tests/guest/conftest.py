"""Guest tests: libguestfs against the sample images -- inspect, the guest session, plans, the prepare options.
A test that launches an appliance is marked ``slow`` (13-25 s a launch here), by hand or, for those using the
shared ``appliance``, by tests/conftest.py; the validation tests beside them run in `make test-fast`."""
from __future__ import annotations

import pytest

from ce import disks
from tests.support.appliance import SharedAppliance


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
    """ONE read-only appliance with every sample disk and format variant attached, for the whole session."""
    paths = {name: str(spec.path) for name, spec in samples.items()}
    shared = SharedAppliance({**paths, **extra_formats})
    yield shared
    shared.guest.close()
