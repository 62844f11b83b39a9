"""Secrets never leave the process that needs them: every step type that takes one runs through the real server
with recognisable fake secrets, then every place ce writes is searched for them.

The SMB password of the (real, local) smbd is a canary ``S3cr3t-CANARY-<random>``, and so is the server's bearer
token. Steps: export (with hashes), publish, convert to SMB, convert from SMB, reverseImage, a dry run, and an
export with a wrong canary password (errors are where secrets usually leak). Searched, as raw bytes and as
UTF-16LE (what SMB and Windows files carry): the server's log, every step's log and document (as the API serves
them, and the SQLite database with its -wal and -shm files), the callback bodies a local HTTPS receiver got, the
process table of the server's session while a step runs (command lines and environments: secrets go through a
pipe), the scratch directory, every file on the share and every produced image. 0 hits expected; the test prints
how many places it searched.
"""
from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import pytest

from ce import staging
from tests.support.certs import self_signed
from tests.support.files import step_files
from tests.support.server_harness import CallbackReceiver, wait_until
from tests.support.smbserver import USER, SambaServer

MiB = 1 << 20
PASSWORD = f"S3cr3t-CANARY-{secrets.token_hex(8)}"
SMB_PASSWORD = PASSWORD                 # the module smbd's account password (tests/conftest.py)
WRONG = f"S3cr3t-CANARY-WRONG-{secrets.token_hex(8)}"
TOKEN = f"S3cr3t-CANARY-TOKEN-{secrets.token_hex(16)}"
CANARIES = (PASSWORD, WRONG, TOKEN)
TERMINAL = ("succeeded", "failed", "canceled")
CHUNK, OVERLAP = 16 * MiB, 256


class Search:
    """Counts the places searched and collects every hit of a canary (raw or UTF-16LE)."""

    def __init__(self):
        self.searched: set[str] = set()          # a process's environment polled many times is one place
        self.bytes = 0
        self.hits: list[str] = []

    @property
    def places(self) -> int:
        return len(self.searched)

    def blob(self, where: str, data: bytes) -> None:
        self.searched.add(where)
        self._scan(where, data)

    def file(self, path: Path) -> None:
        """Reads only the data extents (the images are sparse); chunks overlap so no boundary hides a hit."""
        self.searched.add(str(path))
        with open(path, "rb") as f:
            fd = f.fileno()
            for start, length in data_extents(fd, os.fstat(fd).st_size):
                for pos in range(start, start + length, CHUNK):
                    self._scan(str(path), os.pread(fd, min(CHUNK + OVERLAP, start + length - pos), pos))

    def _scan(self, where: str, data: bytes) -> None:
        self.bytes += len(data)
        for canary in CANARIES:
            for encoding in ("utf-8", "utf-16-le"):
                if canary.encode(encoding) in data:
                    self.hits.append(f"{where}: {canary[:20]}... ({encoding})")

    def tree(self, root: Path, skip: tuple[Path, ...] = ()) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and path not in skip:
                self.file(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The golden disk, the attached disks the steps write, and the steps' scratch directory."""
    return step_files(tmp_path_factory.mktemp("secrets"), 64 * MiB, [(at * MiB, 8 * MiB) for at in (0, 24, 48)],
                      {"target": "target.raw", "local_out": "from-share.qcow2"})


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    """The connector's callback endpoint, pinned by the server."""
    receiver = CallbackReceiver(self_signed(tmp_path_factory.mktemp("connector"), "connector"))
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def server_options(files, receiver) -> dict:
    """The module's server (tests/conftest.py): the canary token, the callback, the disks, this scratch space."""
    return {"disks": [str(files[name]) for name in ("golden", "target", "local_out")], "token": TOKEN,
            "callback": {"url": receiver.url, "sha1_fingerprint": receiver.cert.sha1()},
            "env": {staging.SCRATCH_ENV: str(files["scratch"])}}


@pytest.fixture(scope="module")
def world(files, samba, server, receiver):
    """The files, the module's smbd (its password is the canary: SMB_PASSWORD) with three folders, the server."""
    for folder in ("exp", "pvs", "conv"):
        (samba.share_dir("share") / folder).mkdir(parents=True)
    return {**files, "samba": samba, "server": server, "receiver": receiver}


def location(samba: SambaServer, folder: str, password: str = PASSWORD) -> dict:
    return {"Location": samba.unc("share", folder), "port": samba.port,
            "credentials": {"username": USER, "password": password, "domain": "CETEST"}}


def data_extents(fd: int, size: int):
    """(offset, length) of the data regions of a file (SEEK_DATA / SEEK_HOLE)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:                                 # ENXIO: only a hole is left
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end - start
        offset = end


def session_processes(pgid: int) -> list[int]:
    """The server's processes: gunicorn and its worker share the session, step workers have their own sessions
    but are children of the gunicorn worker."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(") ")[2].split()
        except OSError:
            continue
        if int(fields[3]) == pgid or int(fields[2]) == pgid or int(fields[1]) in found:
            found.append(int(stat.parent.name))
    return found


def run_step(world, search: Search, type_name: str, params: dict) -> dict:
    server = world["server"]
    api = server.session()
    step_id = f"sec-{type_name}-{uuid.uuid4().hex[:6]}"
    response = api.post(server.url + "/v1/steps", json={"id": step_id, "type": type_name, "params": params},
                        timeout=30)
    assert response.status_code == 202, response.text
    search.blob(f"POST /v1/steps response ({type_name})", response.content)
    seen_workers = 0

    def finished():
        nonlocal seen_workers
        for pid in session_processes(server.proc.pid):
            for part in ("cmdline", "environ"):
                try:
                    data = Path(f"/proc/{pid}/{part}").read_bytes()
                except OSError:
                    continue
                search.blob(f"/proc/{pid}/{part}", data)
                seen_workers += b"ce.server.worker" in data
        doc = api.get(f"{server.url}/v1/steps/{step_id}", timeout=30)
        return doc.json()["status"] in TERMINAL and doc
    doc = wait_until(finished, 300, f"the {type_name} step to end", 0.05)
    search.blob(f"GET /v1/steps/{step_id}", doc.content)
    log = api.get(f"{server.url}/v1/steps/{step_id}/log", timeout=30)
    search.blob(f"GET /v1/steps/{step_id}/log", log.content)
    return {**doc.json(), "log": log.json(), "seen_workers": seen_workers}


def test_no_secret_anywhere(world):
    samba, search = world["samba"], Search()
    local_out = world["local_out"]
    assert local_out.stat().st_size == 0
    runs = {
        "export": run_step(world, search, "export", {
            "disk": str(world["golden"]), "outputStorageLocation": location(samba, "exp"), "SmbDiskName": "golden",
            "hashDisk": True}),
        "export-dry": run_step(world, search, "export", {
            "disk": str(world["golden"]), "outputStorageLocation": location(samba, "exp"), "SmbDiskName": "dry",
            "dryRun": True}),
        "publish": run_step(world, search, "publish", {
            "disk": str(world["golden"]), "outputStorageLocation": location(samba, "pvs"), "vDiskName": "Golden"}),
        "convert-to": run_step(world, search, "convert", {
            "source": str(world["golden"]), "outputStorageLocation": location(samba, "conv"),
            "outputImageFilename": "golden.vmdk", "outputFormat": "vmdk"}),
        "convert-from": run_step(world, search, "convert", {
            "inputStorageLocation": location(samba, "exp"), "inputImageFilename": "golden.vhdx",
            "output": str(local_out), "outputFormat": "qcow2", "overwriteOutput": True}),
        "reverse": run_step(world, search, "reverseImage", {
            "disk": str(world["target"]), "inputStorageLocation": location(samba, "exp"),
            "inputImageFilename": "golden.vhdx"}),
        "wrong-password": run_step(world, search, "export", {
            "disk": str(world["golden"]), "outputStorageLocation": location(samba, "exp", WRONG),
            "SmbDiskName": "never"}),
    }
    # the steps really used the secret: all but the last succeeded, the last was refused by the server
    assert {name: r["status"] for name, r in runs.items()} == {**{n: "succeeded" for n in runs},
                                                               "wrong-password": "failed"}
    assert runs["wrong-password"]["error"]["code"] == "smb_auth_failed"
    assert runs["export"]["params"]["outputStorageLocation"]["credentials"]["password"] == "**********"
    assert sum(r["seen_workers"] for r in runs.values()) > 0, "no step process was ever seen running"
    assert local_out.stat().st_size > 0 and (samba.share_dir("share") / "pvs" / "Golden.vhdx").exists()

    server, receiver = world["server"], world["receiver"]
    wait_until(lambda: sum(b'"status": "' in b or b'"status":"' in b for b in receiver.bodies) >= 3 * len(runs),
               30, "the callbacks")
    for i, body in enumerate(receiver.bodies):
        search.blob(f"callback body {i}", body)
    search.file(server.log_path)
    search.tree(server.state_dir)                       # ce.sqlite, -wal, -shm
    search.tree(world["scratch"])
    search.tree(samba.share_dir("share"))               # every uploaded image and anything else on the share
    search.file(local_out)
    search.file(world["target"])
    search.tree(server.workdir, skip=(server.bootstrap, server.log_path))   # anything else the server wrote
    print(f"\nsecrets: {len(CANARIES)} canaries (raw and UTF-16LE) searched in {search.places} places "
          f"({search.bytes / MiB:,.1f} MiB): {len(search.hits)} hits")
    assert search.hits == []
    assert list(world["scratch"].iterdir()) == []


def test_the_search_finds_a_planted_canary(tmp_path):
    """The search itself can fail: a canary hidden in a sparse file's data, UTF-16LE, is found."""
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(32 * MiB)
        f.write(b"\1" * 20 * MiB)
        f.seek(32 * MiB + CHUNK - 10)                   # across a chunk boundary of the scan
        f.write(PASSWORD.encode("utf-16-le"))
    search = Search()
    search.file(path)
    assert len(search.hits) == 1 and "utf-16-le" in search.hits[0]
