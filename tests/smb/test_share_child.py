"""ce.sharechild against a real smbd: a VHDX / VHD parent on the share is served read-only, a local overlay takes
edits (qemu-io writes data and zeros, inside the parent and past its end), and the changes land beside the parent as
a differencing child. The merged disk read by libvhdi and dissect.hypervisor (readers that are not ours) must equal
qemu's view of the overlay byte for byte, and the parent keeps its sha256 and time."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from ce.errors import CeError, ChildDiskFailed, RemoteExists, UnsupportedFormat
from ce.sharechild import changed_extents, opened_parent, structure_ranges
from ce.smb.target import StorageLocation

pytest.importorskip("pyvhdi", reason="python3-libvhdi (debian-packages-test.txt)")
pytest.importorskip("dissect.hypervisor.disk.vhdx", reason="dissect.hypervisor (the test extra)")
pytest.importorskip("nbd", reason="python3-libnbd (debian-packages.txt)")

from tests.support.vhdreaders import dissect_merged, libvhdi_merged, vhdiinfo  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
PARENT_SIZE = 24 * MiB + 3 * 512                     # the parent's last 2 MiB block is partial


def qemu(*args) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def make_parent(folder: Path, name: str, fmt: str) -> Path:
    raw = folder / "parent.raw"
    raw.write_bytes(os.urandom(PARENT_SIZE))
    path = folder / name
    qemu("qemu-img", "convert", "-f", "raw", "-O", fmt, *(("-o", "subformat=dynamic") if fmt == "vpc" else ()),
         str(raw), str(path))
    raw.unlink()
    return path


def edit(overlay: Path, *commands: str) -> None:
    qemu("qemu-io", "-f", "qcow2", *[arg for c in commands for arg in ("-c", c)], str(overlay))


def merged_by_qemu(overlay: Path, work: Path) -> bytes:
    out = work / "merged.raw"
    qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(overlay), str(out))
    return out.read_bytes()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def where(samba, folder: Path) -> StorageLocation:
    return StorageLocation.model_validate(samba.location(folder=folder.name))


EDITS = ("write -P 0x5a 0 4k",                        # the partition table's sectors
         "write -P 0x21 3M 2M",                        # one whole 2 MiB block
         "write -P 0x33 5100k 8k",                     # part of a block
         "write -z 9M 1M",                             # zeros written over parent data: a change too
         f"write -P 0x44 {PARENT_SIZE - 512} 512")     # the parent's last (partial) sector


@pytest.mark.parametrize("fmt, grow", [("vhdx", 0), ("vhdx", 101 * MiB), ("vpc", 0)])
def test_child_on_share_merges_like_the_overlay(samba, folder, tmp_path, fmt, grow):
    name, child_name = ("base.vhdx", "base-1.avhdx") if fmt == "vhdx" else ("base.vhd", "base-1.avhd")
    parent = make_parent(folder, name, fmt)
    before, mtime = sha256(parent), parent.stat().st_mtime_ns
    with opened_parent(where(samba, folder), name, tmp_path) as opened:
        size = opened.facts.virtual_size + grow
        overlay = opened.overlay(tmp_path / "edits.qcow2", size)
        edits = EDITS + ((f"write -P 0x66 {size - 100 * MiB} 64k",) if grow else ())
        edit(overlay, *edits)
        expected = merged_by_qemu(overlay, tmp_path)
        child = opened.write_child(overlay, tmp_path / "child", child_name)
        stored = opened.upload_child(child, child_name, overwrite=False)
        assert opened.unchanged()
    on_share = folder / child_name
    assert stored.size == on_share.stat().st_size == child.summary.file_size
    assert sha256(on_share) == child.sha256
    assert not any(p.name.endswith(".partial") for p in folder.iterdir())
    assert libvhdi_merged(on_share, parent) == expected if not grow else \
        libvhdi_merged(on_share, parent, 0, opened.facts.virtual_size) == expected[:opened.facts.virtual_size]
    if fmt == "vhdx":
        assert dissect_merged(on_share) == expected
        assert rf"\\?\UNC\{samba.host}\share\{folder.name}\{name}" in vhdiinfo(on_share)
    assert (sha256(parent), parent.stat().st_mtime_ns) == (before, mtime)
    # only what the edits touched is in the child: far less than the disk
    assert child.summary.data_bytes < 8 * MiB
    # what the upload reads back: the structure, up to the first data block
    with open(child.path, "rb") as f:
        ranges = structure_ranges(f, fmt)
    if fmt == "vhdx":
        assert ranges == [(0, 4 * MiB)]                     # headers, log, metadata at 2 MiB, BAT at 3 MiB
    else:
        (_, head), footer = ranges
        assert 1536 < head < 4 * KiB and footer == (child.summary.file_size - 512, 512)


def test_changed_extents_are_the_overlays_own_clusters(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu("qemu-img", "create", "-f", "qcow2", str(base), "16M")
    edit(base, "write -P 1 0 16M")
    overlay = tmp_path / "top.qcow2"
    qemu("qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay), "32M")
    assert changed_extents(overlay) == []
    edit(overlay, "write -P 2 64k 64k", "write -z 1M 128k", "write -P 3 20M 4k")
    assert changed_extents(overlay) == [(64 * KiB, 64 * KiB), (1 * MiB, 128 * KiB), (20 * MiB, 64 * KiB)]


def test_existing_child_needs_overwrite_and_names_follow_the_parent(samba, folder, tmp_path):
    parent = make_parent(folder, "gold.vhdx", "vhdx")
    (folder / "gold-1.vhdx").write_bytes(b"an older child")
    with opened_parent(where(samba, folder), "gold.vhdx", tmp_path) as opened:
        overlay = opened.overlay(tmp_path / "edits.qcow2", opened.facts.virtual_size)
        edit(overlay, "write -P 7 0 64k")
        with pytest.raises(ChildDiskFailed, match=r"\.vhdx or \.avhdx"):
            opened.write_child(overlay, tmp_path / "child", "gold-1.vhd")
        child = opened.write_child(overlay, tmp_path / "child", "gold-1.vhdx")
        with pytest.raises(RemoteExists):
            opened.upload_child(child, "gold-1.vhdx", overwrite=False)
        assert (folder / "gold-1.vhdx").read_bytes() == b"an older child"
        opened.upload_child(child, "gold-1.vhdx", overwrite=True)
    assert sha256(folder / "gold-1.vhdx") == child.sha256
    with pytest.raises(UnsupportedFormat, match="itself a differencing disk"):
        with opened_parent(where(samba, folder), "gold-1.vhdx", tmp_path):
            pass
    assert parent.exists()


def test_missing_parent_is_the_shares_error(samba, folder, tmp_path):
    with pytest.raises(CeError) as caught:
        with opened_parent(where(samba, folder), "absent.vhdx", tmp_path):
            pass
    assert caught.value.code == "smb_not_found"
