"""ce.disks.chains (issue 16, item 1): what an image's header makes qemu open is found before qemu opens it; under
``restrict_to`` (the server) a chain that leaves the attached disks is refused and nothing of it is read; locally it
is followed and said; a block device is always read as raw.

qemu-img's own report of each image (``info`` names backing files, data files and VMDK extents) is the second
opinion on what the headers name."""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path

import pytest

from ce import disks, hashing
from ce.disks import chains
from ce.errors import DiskChainRefused
from tests.support.chains import (MiB, connected, descriptor, hostile_images, listening_socket, md5, qemu_img,
                                  secret_file)


@pytest.fixture
def listener():
    with listening_socket() as sock:
        yield sock


@pytest.fixture
def hostile(tmp_path, listener):
    secret = secret_file(tmp_path)
    return secret, hostile_images(tmp_path, secret, listener.getsockname()[1])


@pytest.fixture(autouse=True)
def local_policy():
    chains.restrict_to(None)
    yield
    chains.restrict_to(None)


def qemu_names(image: Path) -> set[str]:
    """The other files qemu-img info reports for ``image`` (backing file, data file, VMDK extents)."""
    data = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(image)], capture_output=True,
                                     text=True).stdout or "{}")
    specific = data.get("format-specific", {}).get("data", {})
    names = {data.get("backing-filename"), specific.get("data-file")}
    names |= {extent["filename"] for extent in specific.get("extents", []) if extent["filename"] != str(image)}
    return {n for n in names if n}


def test_every_file_qemu_opens_is_named(hostile):
    secret, images = hostile
    for name, image in images.items():
        found = chains.references(lambda o, n: open(image, "rb").read()[o:o + n], image.stat().st_size)
        assert found, name
        ours = {ref.resolve(str(image)) or ref.name for ref in found}
        if name not in ("backing-nbd", "backing-json", "backing-file-protocol"):     # qemu-img info opens those
            assert {str(Path(n) if Path(n).is_absolute() else (image.parent / n).resolve())
                    for n in qemu_names(image)} == ours == {str(secret)}, name


def test_the_server_policy_refuses_each_before_qemu_opens_it(hostile, listener):
    secret, images = hostile
    chains.restrict_to(str(p) for p in images.values())
    for name, image in images.items():
        for read in (disks.info, disks.check, lambda p: hashing.hash_disk(str(p), algorithms=("md5",))):
            with pytest.raises(DiskChainRefused) as refused:
                read(image)
            assert str(image) in refused.value.message and refused.value.code == "disk_chain_refused", name
    assert not connected(listener), "qemu connected to the NBD server a backing file named"


def test_a_chain_of_attached_disks_is_read_as_one(tmp_path):
    parent = tmp_path / "parent.raw"
    parent.write_bytes(b"parent" * 100000)
    child = tmp_path / "child.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "parent.raw", "-F", "raw", str(child), "1M")
    flat = tmp_path / "flat.raw"
    qemu_img("convert", "-O", "raw", str(child), str(flat))
    chains.restrict_to([str(child), str(parent)])
    assert hashing.hash_disk(str(child), algorithms=("md5",)).hashes["md5"] == md5(flat)
    chains.restrict_to([str(child)])
    with pytest.raises(DiskChainRefused, match="parent.raw"):
        disks.info(child)


def test_locally_a_chain_is_followed_and_said(hostile, caplog):
    secret, images = hostile
    with caplog.at_level(logging.WARNING, logger="ce.disks.chains"):
        digest = hashing.hash_disk(str(images["backing-absolute"]), algorithms=("md5",)).hashes["md5"]
    assert digest == md5(secret)
    assert f"names backing file {str(secret)!r}" in caplog.text and "ce serve" in caplog.text


def test_a_block_device_is_read_as_raw_whatever_its_header_says(hostile):
    secret, images = hostile
    image = images["backing-absolute"]
    os_truncate = image.stat().st_size + (-image.stat().st_size % MiB)
    with open(image, "r+b") as f:
        f.truncate(os_truncate)
    device = subprocess.run(["losetup", "--find", "--show", "--read-only", str(image)], capture_output=True, text=True)
    if device.returncode:
        pytest.skip(f"no loop device here: {device.stderr.strip()}")
    dev = device.stdout.strip()
    try:
        chains.restrict_to([dev])
        assert disks.info(dev).format == "raw" and not disks.info(dev).backing_file
        assert hashing.hash_disk(dev, algorithms=("md5",)).hashes["md5"] == md5(image) != md5(secret)
    finally:
        subprocess.run(["losetup", "--detach", dev], check=True)


@pytest.mark.parametrize("head", [
    "version=1\n", "# Disk DescriptorFile\nversion=1\n", "#\n# x\nversion=2\n", "   \nversion=3\r\n",
    "# c\r\n    \r\nversion=1\r\n", "\nversion=1\n",
])
def test_a_descriptor_qemu_would_probe_as_vmdk_is_found(tmp_path, head):
    """Our descriptor test is at least as wide as qemu's probe (a file qemu takes for VMDK opens its extents)."""
    image = tmp_path / "probe.vmdk"
    image.write_text(head + descriptor('RW 2048 FLAT "elsewhere.raw" 0', comment="").split("\n", 1)[1])
    probed = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)], capture_output=True,
                                       text=True).stdout or '{"format": null}')["format"]
    ours = chains.is_vmdk_descriptor(image.read_bytes()[:2048])
    assert ours or probed != "vmdk"
    assert ours == bool(chains.references(lambda o, n: image.read_bytes()[o:o + n], image.stat().st_size))


def test_a_sparse_vmdk_names_its_parent(tmp_path):
    parent = tmp_path / "parent.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", str(parent), "1M")
    child = tmp_path / "child.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-b", "parent.vmdk", "-F", "vmdk", str(child), "1M")
    refs = chains.references(lambda o, n: child.read_bytes()[o:o + n], child.stat().st_size)
    assert [(r.kind, r.resolve(str(child))) for r in refs] == [("parent", str(parent))]
    assert chains.references(lambda o, n: parent.read_bytes()[o:o + n], parent.stat().st_size) == []
    chains.restrict_to([str(child)])
    with pytest.raises(DiskChainRefused):
        disks.info(child)


def test_a_hostile_qcow2_header_is_bounded(tmp_path):
    """Backing names past the end, extension lengths past the cluster: refused or ignored, never a crash."""
    image = tmp_path / "odd.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "1M")
    data = bytearray(image.read_bytes())
    data[8:20] = (1 << 40).to_bytes(8, "big") + (200).to_bytes(4, "big")        # a name 1 TiB into a small file
    data[104:112] = (0xE2792ACA).to_bytes(4, "big") + (0xFFFFFFF0).to_bytes(4, "big")
    image.write_bytes(bytes(data))
    refs = chains.references(lambda o, n: bytes(data[o:o + n]), len(data))
    assert [(r.kind, r.name) for r in refs] == [("backing file", "")]
    chains.restrict_to([str(image)])
    with pytest.raises(DiskChainRefused):
        disks.info(image)
    assert hashlib.md5(image.read_bytes()).hexdigest() == hashlib.md5(bytes(data)).hexdigest()


def test_an_overlay_ce_made_is_its_own_chain(tmp_path):
    """convert and reverse-image read a share's image through a local overlay over an NBD export ce started (the
    image itself vetted by refuse_any): that overlay passes, the same overlay made by anyone else does not."""
    source = tmp_path / "source.raw"
    source.write_bytes(b"x" * MiB)
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    chains.restrict_to([str(ours), str(theirs)])
    disks.create_overlay(str(source), "raw", ours, MiB)
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(source), "-F", "raw", str(theirs), "1M")
    assert disks.info(ours).backing_file == str(source)
    with pytest.raises(DiskChainRefused):
        disks.info(theirs)
