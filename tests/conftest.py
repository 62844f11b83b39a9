"""What every folder shares: the sample images, ONE Samba fixture (``samba``, one smbd per module; ``full_samba``
is the same smbd with a full disk) and ONE PKI / step server fixture (``pki`` for the session, ``server`` / ``api``
per module), the fault suite's depth options, and the markers by fixture (tests/support/marks.py). The folders mirror the architecture: unit (no appliance, smbd or
server), guest (libguestfs), smb (a real smbd), server (the gunicorn step server), faults, image; each folder's
conftest.py marks its tests. Helpers live in tests/support/."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from images.build import build
from images.spec import Spec
from tests.support import faults, marks
from tests.support.server_harness import Pki, ServerProcess
from tests.support.smbserver import PASSWORD, SambaServer, fresh_folder, tiny_share

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ["CE_STRICT_DOCUMENTS"] = "1"     # a step's facts that stray from its schema fail (ce.document), CLI and server too
MiB = 1 << 20


def pytest_addoption(parser):
    faults.add_options(parser)          # here, not in tests/faults/conftest.py: pytest reads options only from the
                                        # conftest.py files it finds before collecting (those of the paths given)


def pytest_configure(config):
    faults.configure(config)


def pytest_collection_modifyitems(items):
    marks.mark_by_fixtures(items)


@pytest.fixture(scope="session")
def samples() -> dict[str, Spec]:
    """Every sample image, built if missing or stale (cached in images/build/)."""
    return {spec.name: spec for spec in build(say=lambda *_: None)}


# ---------------------------------------------------------------- Samba

@contextmanager
def smbd(tmp_path_factory, module, **options) -> Iterator[SambaServer]:
    """A throwaway smbd (tests/support/smbserver.py) for a module. Shares: ``share``; ``sealed`` (encryption
    required); ``tiny``, which reports the module's ``TINY_TOTAL`` / ``TINY_FREE`` bytes (default 100 / 10 MiB). The
    account's password is the module's ``SMB_PASSWORD`` if it sets one (smbserver.PASSWORD otherwise)."""
    root = tmp_path_factory.mktemp("samba")
    total, free = getattr(module, "TINY_TOTAL", 100 * MiB), getattr(module, "TINY_FREE", 10 * MiB)
    shares = {"share": {}, "sealed": {"smb encrypt": "required"}, "tiny": tiny_share(root, total, free)}
    with SambaServer(root, shares=shares, password=getattr(module, "SMB_PASSWORD", PASSWORD), **options) as server:
        yield server


@pytest.fixture(scope="module")
def samba(tmp_path_factory, request):
    """The module's smbd, one per module so shares never carry files from one module to the next."""
    with smbd(tmp_path_factory, request.module) as server:
        yield server


@pytest.fixture(scope="module")
def full_samba(tmp_path_factory, request):
    """A second smbd whose files cannot grow past 4 MiB: writes beyond fail with STATUS_DISK_FULL."""
    with smbd(tmp_path_factory, request.module, file_size_limit=4 * MiB) as server:
        yield server


@pytest.fixture
def folder(samba, request) -> Path:
    """A fresh folder on the module's ``samba`` share for one test (its path on the Samba side)."""
    return fresh_folder(samba, request.node.name)


# ---------------------------------------------------------------- PKI and the step server

@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """The job's CA with server and connector certificates, and an unrelated CA (read-only: shared by every test)."""
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_options() -> dict:
    """ServerProcess's keyword arguments for the module's ``server`` (disks, callback, env, token): a module that
    needs more than a server with no disks overrides this fixture."""
    return {}


@pytest.fixture(scope="module")
def server(tmp_path_factory, pki, server_options):
    """The module's `ce serve` (gunicorn, mutual TLS, a token; tests/support/server_harness.py), one per module."""
    with ServerProcess(tmp_path_factory.mktemp("server"), pki, **server_options) as started:
        yield started


@pytest.fixture(scope="module")
def api(server):
    """A session the server trusts: the connector's certificate and the bearer token."""
    return server.session()
