"""ce.disks.differencing: VHDX and VHD children of qemu-made parents, read back by readers that are not ours --
libvhdi (python3-libvhdi's pyvhdi, vhdiinfo) and dissect.hypervisor -- byte for byte against the expected merged
disk (the parent with the changes applied, zeros past its end). qemu-img is no verifier here: it refuses VHDX
children and reads a VHD child's parent as zeros."""
from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from ce.disks.differencing import (FULLY_PRESENT, NOT_PRESENT, PARTIALLY_PRESENT, ZERO, FileSink, changed_runs,
                                   parent_facts, write_child)
from ce.disks.headers import crc32c, vhdx_current_header
from ce.errors import LayoutError, UnsupportedFormat

pyvhdi = pytest.importorskip("pyvhdi", reason="python3-libvhdi (debian-packages-test.txt)")
vhdx_reader = pytest.importorskip("dissect.hypervisor.disk.vhdx", reason="dissect.hypervisor (the test extra)")

from tests.support.vhdreaders import dissect_merged as _dissect, libvhdi_merged as _libvhdi, media as _media, \
    vhdiinfo as _vhdiinfo  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
PARENT_SIZE = 20 * MiB + 3 * 512          # the last 2 MiB child block (and qemu's 8 MiB one) is partial


# ---------------------------------------------------------------- parents (made by qemu-img, never written after)

workdir = pytest.fixture(scope="module")(lambda tmp_path_factory: tmp_path_factory.mktemp("differencing"))


@pytest.fixture(scope="module")
def parent_raw(workdir) -> bytes:
    path = workdir / "parent.raw"
    data = os.urandom(PARENT_SIZE)
    path.write_bytes(data)
    return data


def _qemu_img(*args) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def parents(workdir, parent_raw) -> dict[str, Path]:
    """VHDX and dynamic VHD converted from random data, and empty ones from ``qemu-img create``."""
    made = {"vhdx": workdir / "base.vhdx", "vhd": workdir / "base.vhd",
            "vhdx-empty": workdir / "empty.vhdx", "vhd-empty": workdir / "empty.vhd"}
    _qemu_img("convert", "-f", "raw", "-O", "vhdx", workdir / "parent.raw", made["vhdx"])
    _qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic", workdir / "parent.raw", made["vhd"])
    _qemu_img("create", "-f", "vhdx", "-o", "block_size=1M", made["vhdx-empty"], str(PARENT_SIZE))
    _qemu_img("create", "-f", "vpc", "-o", "subformat=dynamic", made["vhd-empty"], str(PARENT_SIZE))
    return made


@pytest.fixture(autouse=True)
def parents_unchanged(request):
    """Every test leaves every parent byte-identical (sha256)."""
    if "parents" not in request.fixturenames:
        yield
        return
    made = request.getfixturevalue("parents")
    before = {name: _sha256(path) for name, path in made.items()}
    yield
    assert {name: _sha256(path) for name, path in made.items()} == before


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- writing and reading a child

def _write(parent: Path, child: Path, changes: list[tuple[int, bytes]], size: int | None = None, **options):
    """Write ``child`` of ``parent`` with ``changes`` [(offset, data)]; returns (summary, expected merged bytes,
    the ranges read_merged was asked for)."""
    parent_size, parent_bytes = _media(parent)
    size = size or parent_size
    expected = bytearray(parent_bytes + bytes(size - parent_size))
    for offset, data in changes:
        expected[offset:offset + len(data)] = data
    asked: list[tuple[int, int]] = []

    def read_merged(offset: int, length: int) -> bytes:
        asked.append((offset, length))
        assert 0 <= offset and offset + length <= size
        return bytes(expected[offset:offset + length])

    with open(parent, "rb") as p:
        facts = parent_facts(lambda offset, length: os.pread(p.fileno(), length, offset), os.path.getsize(parent),
                             mtime=os.stat(parent).st_mtime)
    options.setdefault("parent_name", parent.name)
    with open(child, "wb") as f:
        summary = write_child(facts, [(offset, len(data)) for offset, data in changes], read_merged, FileSink(f),
                              virtual_size=size, **options)
    assert os.path.getsize(child) == summary.file_size
    return summary, bytes(expected), asked


def _bat_states(child: Path) -> list[int]:
    """Payload states of the child's BAT (ours: BAT at 3 MiB, 2 MiB blocks, 512-byte sectors: cr 2048)."""
    with open(child, "rb") as f:
        f.seek(3 * MiB)
        raw = f.read(8 * 2049)
    entries = struct.unpack(f"<{len(raw) // 8}Q", raw)
    return [entry & 7 for i, entry in enumerate(entries) if i % 2049 != 2048]


def _changes(*spec: tuple[int, int]) -> list[tuple[int, bytes]]:
    return [(offset, os.urandom(length)) for offset, length in spec]


# Changes as (offset, length): block-aligned (block 2 whole), sub-block (inside block 0, unaligned bytes),
# spanning blocks 3-5 (block 4 whole), and the parent's last (partial) sector.
MIXED = ((4 * MiB, 2 * MiB), (100_000, 1000), (8 * MiB - 4 * KiB, 2 * MiB + 12 * KiB), (PARENT_SIZE - 512, 512))


# ---------------------------------------------------------------- VHDX

@pytest.mark.parametrize("parent_name", ["vhdx", "vhdx-empty"])
def test_vhdx_child_merges_in_libvhdi_and_dissect(workdir, parents, parent_name):
    parent = parents[parent_name]
    child = workdir / f"{parent_name}-child.vhdx"
    summary, expected, asked = _write(parent, child, _changes(*MIXED),
                                      parent_absolute=rf"\\?\UNC\server\store\{parent.name}")
    assert _libvhdi(child, parent) == expected
    assert _dissect(child) == expected
    states = _bat_states(child)
    assert states[:11] == [PARTIALLY_PRESENT, NOT_PRESENT, FULLY_PRESENT, PARTIALLY_PRESENT, FULLY_PRESENT,
                           PARTIALLY_PRESENT, NOT_PRESENT, NOT_PRESENT, NOT_PRESENT, NOT_PRESENT, PARTIALLY_PRESENT]
    assert summary.blocks == {"partially_present": 4, "not_present": 5, "fully_present": 2}
    # read_merged is asked for the changes rounded out to sectors, nothing else
    assert sum(length for _, length in asked) == 2 * MiB + 1536 + 2 * MiB + 12 * KiB + 512
    info = _vhdiinfo(child)
    assert "Differential" in info
    assert f"Parent identifier\t: {summary.parent_identifier}" in info
    assert rf"Parent filename		: \\?\UNC\server\store\{parent.name}" in info


def test_vhdx_child_metadata_and_locator(workdir, parents):
    parent = parents["vhdx"]
    child = workdir / "locator.vhdx"
    summary, _, _ = _write(parent, child, _changes((0, 4096)), parent_absolute=r"C:\store\base.vhdx")
    with open(parent, "rb") as p:
        linkage = uuid.UUID(bytes_le=vhdx_current_header(lambda o, n: os.pread(p.fileno(), n, o))[32:48])
    assert summary.parent_locator == {"parent_linkage": "{%s}" % linkage, "relative_path": r".\base.vhdx",
                                      "absolute_win32_path": r"C:\store\base.vhdx"}
    disk = vhdx_reader.VHDX(child)
    assert disk.parent_locator.entries == summary.parent_locator
    assert disk.has_parent and disk.block_size == 2 * MiB and disk.size == PARENT_SIZE
    data = child.read_bytes()
    headers = [bytearray(data[offset:offset + 4096]) for offset in (64 * KiB, 128 * KiB)]
    for number, header in enumerate(headers, start=1):
        checksum, sequence = struct.unpack_from("<IQ", header, 4)
        header[4:8] = bytes(4)
        assert crc32c(header) == checksum and sequence == number
        assert uuid.UUID(bytes_le=bytes(header[32:48])) == uuid.UUID(summary.identifier)
    assert headers[0][16:48] == headers[1][16:48]                          # same FileWriteGuid and DataWriteGuid
    assert data[192 * KiB:256 * KiB] == data[256 * KiB:320 * KiB]          # both region tables


def test_vhdx_child_only_relative_path_for_dissect(workdir, parents):
    """Without an absolute path the child is found by relative_path (dissect, Windows); pyvhdi is given it."""
    parent = parents["vhdx"]
    child = workdir / "relative.vhdx"
    _, expected, _ = _write(parent, child, _changes((6 * MiB + 512, 512)))
    assert _dissect(child) == expected
    assert _libvhdi(child, parent) == expected
    assert "Parent filename" not in _vhdiinfo(child) or r".\base.vhdx" not in _vhdiinfo(child)


def test_vhdx_grown_child(workdir, parents):
    """A child 5 MiB + 3.5 KiB larger than its parent: the block straddling the parent's end is FULLY_PRESENT, a
    changed block past it too, unchanged ones past it ZERO. dissect reads it all; libvhdi 20210425 goes to the
    parent for ZERO blocks and fails past its end, so it is checked within the parent only."""
    parent = parents["vhdx"]
    size = PARENT_SIZE + 5 * MiB + 3584
    child = workdir / "grown.vhdx"
    changes = _changes(*MIXED, (PARENT_SIZE + 1000, 3000), (size - 512, 512))
    summary, expected, _ = _write(parent, child, changes, size)
    assert _dissect(child) == expected
    assert _libvhdi(child, parent, 0, PARENT_SIZE) == expected[:PARENT_SIZE]
    with pytest.raises(OSError):
        _libvhdi(child, parent, 22 * MiB, 4096)                              # block 11: ZERO, past the parent
    assert _bat_states(child)[10:13] == [FULLY_PRESENT, ZERO, FULLY_PRESENT]
    assert summary.virtual_size == size
    assert f"Media size" in _vhdiinfo(child) and f"({size} bytes)" in _vhdiinfo(child)


def test_vhdx_grown_child_allocated_reads_in_libvhdi(workdir, parents):
    parent = parents["vhdx"]
    size = PARENT_SIZE + 9 * MiB
    child = workdir / "grown-allocated.vhdx"
    summary, expected, _ = _write(parent, child, _changes(*MIXED, (size - 4096, 4096)), size,
                                  past_parent="allocated", parent_absolute=r"C:\store\base.vhdx")
    assert _libvhdi(child, parent) == expected
    assert _dissect(child) == expected
    assert ZERO not in _bat_states(child)[:15]
    assert summary.data_bytes < 7 * MiB                       # the allocated zero blocks were not written


def test_vhdx_child_of_empty_parent_with_no_changes(workdir, parents):
    parent = parents["vhdx-empty"]
    child = workdir / "nochange.vhdx"
    summary, expected, asked = _write(parent, child, [])
    assert asked == [] and summary.data_bytes == 0
    assert _libvhdi(child, parent) == expected == bytes(PARENT_SIZE)
    assert _dissect(child) == expected
    assert summary.file_size == 5 * MiB                       # headers, log, metadata, BAT, one bitmap block


# ---------------------------------------------------------------- VHD

@pytest.mark.parametrize("parent_name", ["vhd", "vhd-empty"])
def test_vhd_child_merges_in_libvhdi(workdir, parents, parent_name):
    parent = parents[parent_name]
    size, _ = _media(parent)
    child = workdir / f"{parent_name}-child.vhd"
    summary, expected, asked = _write(parent, child, _changes(*MIXED[:3], (size - 512, 512)),
                                      parent_absolute=rf"C:\store\{parent.name}")
    assert _libvhdi(child, parent) == expected
    assert summary.blocks["present"] == 6           # blocks 0, 2, 3, 4, 5, 10
    assert all(offset % 4096 == 0 for offset, _ in asked)     # rounded out to whole bitmap bytes
    info = _vhdiinfo(child)
    assert "Differential" in info
    assert f"Parent identifier\t: {summary.parent_identifier}" in info
    assert f"Parent filename\t\t: {parent.name}" in info
    with open(child, "rb") as f:
        footer = f.read(512)
        f.seek(-512, os.SEEK_END)
        assert f.read(512) == footer
    assert struct.unpack_from(">I", footer, 60)[0] == 4
    assert struct.unpack_from(">Q", footer, 48)[0] == size


def test_vhd_child_header_names_parent(workdir, parents):
    parent = parents["vhd"]
    child = workdir / "header.vhd"
    summary, _, _ = _write(parent, child, _changes((0, 512)), parent_absolute=r"C:\store\base.vhd")
    data = child.read_bytes()
    header = data[512:1536]
    assert header[:8] == b"cxsparse"
    assert header[40:56] == parent.read_bytes()[-512:][68:84]
    assert struct.unpack_from(">I", header, 56)[0] == int(os.stat(parent).st_mtime) - 946684800
    assert header[64:64 + 16] == "base.vhd".encode("utf-16-be")
    locators = {}
    for i in range(8):
        code, space, length, _, offset = struct.unpack_from(">4sIIIQ", header, 576 + 24 * i)
        if length:
            locators[code] = data[offset:offset + length].decode("utf-16-le")
    assert locators == {b"W2ru": r".\base.vhd", b"W2ku": r"C:\store\base.vhd"}
    assert summary.parent_locator["W2ru"] == r".\base.vhd"


def test_vhd_grown_child_refused(workdir, parents):
    with pytest.raises(UnsupportedFormat, match="parent's size"):
        _write(parents["vhd"], workdir / "grown.vhd", [], PARENT_SIZE + 4 * MiB)
    assert not (workdir / "grown.vhd").stat().st_size


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("extents, message", [
    ([(PARENT_SIZE - 512, 1024)], "past the child's end"),
    ([(-512, 512)], "empty or negative"),
    ([(4096, 0)], "empty or negative"),
    ([(0, 8192), (4096, 512)], "overlaps"),
    ([(1 * MiB, 512), (0, 1 * MiB + 1)], "overlaps"),
])
def test_bad_extents_refused(workdir, parents, extents, message):
    with open(parents["vhdx"], "rb") as p:
        facts = parent_facts(lambda o, n: os.pread(p.fileno(), n, o), os.path.getsize(parents["vhdx"]))
    written = []

    class Sink:
        def write_at(self, offset, data):
            written.append(offset)

    with pytest.raises(LayoutError, match=message):
        write_child(facts, extents, lambda o, n: bytes(n), Sink(), parent_name="base.vhdx")
    assert written == []


def test_changed_runs_round_and_merge():
    assert changed_runs([(4096, 100), (100, 10), (600, 10)], 10_000, 512) == [(0, 1024), (4096, 4608)]
    assert changed_runs([(9_990, 10)], 10_000, 4096) == [(8192, 10_000)]
    assert changed_runs([(0, 512), (512, 512)], 1024, 512) == [(0, 1024)]


def test_child_of_a_child_and_bad_names_refused(workdir, parents):
    child = workdir / "first.vhdx"
    _write(parents["vhdx"], child, _changes((0, 512)))
    with open(child, "rb") as c, pytest.raises(UnsupportedFormat, match="itself a differencing"):
        parent_facts(lambda o, n: os.pread(c.fileno(), n, o), os.path.getsize(child))
    with pytest.raises(LayoutError, match="bare file name"):
        _write(parents["vhdx"], workdir / "named.vhdx", [], parent_name=r"store\base.vhdx")
    with pytest.raises(UnsupportedFormat, match="modification time"), open(parents["vhd"], "rb") as p:
        parent_facts(lambda o, n: os.pread(p.fileno(), n, o), os.path.getsize(parents["vhd"]))
