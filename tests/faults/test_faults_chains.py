"""Issue 16, item 1, against the real server: an attached disk file whose header names another file (a qcow2
backing file by path, relative name, ``file:``, ``json:`` or ``nbd://``; a qcow2 external data file; VMDK extents)
is refused with ``disk_chain_refused`` -- at the door, in ``GET /v1/disks`` and inside the step's own process --
and nothing of the secret it names reaches a step document, a log or the network. A chain whose every file is an
attached disk is read as one disk.

The probe that found it: ``qemu-img create -f qcow2 -b SECRET -F raw disk.img 1M``, attach, ``hash`` -> the
secret's md5."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.chains import connected, hostile_images, listening_socket, md5, qemu_img, secret_file
from tests.support.server_harness import wait_until

TERMINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def nbd_listener():
    with listening_socket() as sock:
        yield sock


@pytest.fixture(scope="module")
def chained(tmp_path_factory, nbd_listener):
    folder = tmp_path_factory.mktemp("chains")
    secret = secret_file(folder)
    images = hostile_images(folder, secret, nbd_listener.getsockname()[1])
    parent = folder / "parent.raw"
    parent.write_bytes(os.urandom(1 << 20))
    child = folder / "child.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "parent.raw", "-F", "raw", str(child), "1M")
    flat = folder / "flat.raw"
    qemu_img("convert", "-O", "raw", str(child), str(flat))
    return {"secret": secret, "images": images, "child": child, "parent": parent, "flat": flat}


@pytest.fixture(scope="module")
def server_options(chained) -> dict:
    attached = [*chained["images"].values(), chained["child"], chained["parent"]]
    return {"disks": [str(p) for p in attached]}


def run_step(api, server, step_id: str, kind: str, params: dict) -> dict:
    created = api.post(server.url + "/v1/steps", json={"id": step_id, "type": kind, "params": params}, timeout=30)
    if created.status_code != 202:
        return {"refused": created.status_code, **created.json()}
    return wait_until(lambda: (doc := api.get(f"{server.url}/v1/steps/{step_id}", timeout=10).json())["status"]
                      in TERMINAL and doc, 120, f"step {step_id} to end")


def test_a_disk_whose_chain_leaves_the_attached_disks_is_refused(chained, server, api, nbd_listener):
    secret_md5 = md5(chained["secret"])
    for name, image in chained["images"].items():
        for kind, params in (("hash", {"disk": str(image)}),
                             ("convert", {"source": str(image), "output": str(image) + ".out.raw",
                                          "outputFormat": "raw"})):
            doc = run_step(api, server, f"{kind}-{name}", kind, params)
            assert doc.get("refused") == 422, (name, kind, doc)
            assert doc["error"]["code"] == "disk_chain_refused" and str(image) in doc["error"]["message"], doc
            assert doc["error"]["field"] == ("params.disk" if kind == "hash" else "params.source"), doc
            assert not os.path.exists(str(image) + ".out.raw")
    listed = {d["path"]: d for d in api.get(server.url + "/v1/disks", timeout=30).json()["disks"]}
    for name, image in chained["images"].items():
        assert listed[str(image)]["error"]["code"] == "disk_chain_refused", (name, listed[str(image)])
    assert not connected(nbd_listener), "the server connected to the NBD server a backing file names"
    assert secret_md5 not in server.log_text()


def test_a_chain_of_attached_disks_is_read_as_one(chained, server, api):
    doc = run_step(api, server, "hash-attached-chain", "hash", {"disk": str(chained["child"]), "algorithms": ["md5"]})
    assert doc["status"] == "succeeded", doc
    assert doc["result"]["facts"]["hashes"]["md5"] == md5(chained["flat"])


def test_the_step_process_refuses_a_chain_on_its_own(chained, tmp_path):
    """The worker enforces the attached disks it is given even if the door's check were bypassed (a header
    rewritten between submit and run)."""
    image = chained["images"]["backing-absolute"]
    read_fd, write_fd = os.pipe()
    job = {"id": "direct", "type": "hash", "params": {"disk": str(image)}, "attached": [str(image)]}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-m", "ce.server.worker", str(write_fd)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, pass_fds=(write_fd,), env=env,
                          cwd=ROOT) as proc:
        os.close(write_fd)
        proc.stdin.write(json.dumps(job) + "\n")         # stdin stays open: its end would mean "service gone"
        proc.stdin.flush()
        with os.fdopen(read_fd) as events:
            done = next(event for line in events if (event := json.loads(line))["event"] == "done")
        proc.stdin.close()
        output = proc.stdout.read()
    assert done["status"] == "failed", (done, output)
    assert done["error"]["code"] == "disk_chain_refused"
    assert md5(chained["secret"]) not in json.dumps(done) + output
