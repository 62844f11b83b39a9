"""Streaming a raw disk into a VHD / VHDX on a real Samba share (ce.disks.layouts through SmbShare.upload).

Each container is checked the way a user would: downloaded back, opened by qemu-img (check, compare with the
source) and by libvhdi (an independent reader: type and size), and its allocation is compared with the source's
data -- zero blocks allocate nothing, data blocks are whole, fixed files have every block where the BAT says."""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ce import disks
from ce.disks import layouts
from ce.smb import Credentials, SmbShare
from tests.support.smbserver import PASSWORD, USER

MiB = 1 << 20
CONTAINERS = [("vhdx", "dynamic"), ("vhdx", "fixed"), ("vpc", "dynamic"), ("vpc", "fixed")]
READER_TYPES = {"dynamic": "Dynamic", "fixed": "Fixed", "monolithicSparse": "Monolithic sparse"}
READERS = {"vhdx": "vhdiinfo", "vpc": "vhdiinfo", "vmdk": "vmdkinfo"}


@pytest.fixture(scope="module")
def share(samba):
    """The module smbd's share, connected, with its local ``directory``."""
    with SmbShare(samba.unc("share"), Credentials(USER, PASSWORD), port=samba.port) as connected:
        connected.directory = samba.share_dir("share")
        yield connected


def write_pieces(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for at, data in pieces:
            f.seek(at)
            f.write(data)


def awkward_source(path: Path) -> Path:
    """37 MiB + 3 sectors (the last block is partial): data straddling a 2 MiB and an 8 MiB block boundary, a
    lone sector, written zeros (allocated on disk but all zero), a hole, and data in the last sectors."""
    size = 37 * MiB + 3 * 512
    write_pieces(path, size, [(0, os.urandom(700)), (2 * MiB - 300, os.urandom(600)),
                              (8 * MiB - 4096, os.urandom(8192)), (13 * MiB + 512, os.urandom(512)),
                              (20 * MiB, bytes(4 * MiB)), (size - 1000, os.urandom(1000))])
    return path


def stream(share: SmbShare, source: Path, fmt: str, subformat: str, name: str, scratch: Path):
    empty = scratch / f"{name}.empty"
    disks.create_empty(empty, fmt, source.stat().st_size, subformat)
    layout = layouts.for_container(str(empty), fmt, subformat)
    stored = share.upload(source, name, layout=layout)
    return layout, stored, share.directory / name


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True)


def assert_same_disk(source: Path, stored: Path, fmt: str, subformat: str) -> None:
    compared = qemu_img("compare", "-f", "raw", "-F", fmt, str(source), str(stored))
    assert compared.returncode == 0, compared.stdout + compared.stderr
    if fmt in ("vhdx", "vmdk"):
        checked = qemu_img("check", "-f", fmt, str(stored))
        assert checked.returncode == 0, checked.stdout + checked.stderr
    described = disks.info(stored, fmt)
    assert (described.format, described.subformat, described.virtual_size) == (fmt, subformat, source.stat().st_size)
    if shutil.which(READERS[fmt]):
        report = subprocess.run([READERS[fmt], str(stored)], capture_output=True, text=True, check=True).stdout
        assert re.search(rf"Disk type\s*:\s*{READER_TYPES[subformat]}\b", report), report
        assert f"({source.stat().st_size} bytes)" in report, report


@pytest.mark.parametrize("fmt,subformat", CONTAINERS)
def test_a_streamed_container_reads_back_as_the_source(share, tmp_path, fmt, subformat):
    source = awkward_source(tmp_path / "source.raw")
    layout, stored, path = stream(share, source, fmt, subformat, f"awkward-{fmt}-{subformat}", tmp_path)
    assert_same_disk(source, path, fmt, subformat)
    assert stored.size == path.stat().st_size == layout.size
    data = 700 + 600 + 8192 + 512 + 1000
    assert data <= stored.sent - layout.overhead < MiB     # whole file-system blocks of data, never the 4 MiB of zeros
    assert not list(share.directory.glob("*.partial"))


def test_dynamic_vhdx_allocates_only_blocks_with_data(share, tmp_path):
    source = awkward_source(tmp_path / "source.raw")
    layout, _, path = stream(share, source, "vhdx", "dynamic", "blocks.vhdx", tmp_path)
    # 8 MiB blocks: 0 holds the first pieces, 1 the rest of the straddle at 8 MiB and the lone sector at 13 MiB,
    # 2 only written zeros, 3 nothing, 4 the tail.
    present = vhdx_present_blocks(path, layout)
    assert present == [0, 1, 4]
    assert layout.block_size == 8 * MiB
    assert path.stat().st_size == layout.size == vhdx_first_payload(layout) + 3 * layout.block_size


def vhdx_present_blocks(path: Path, layout) -> list[int]:
    with open(path, "rb") as f:
        f.seek(layout.bat_offset)
        table = f.read(8 * (layout.source_size // layout.block_size + 2))
    present = []
    for block in range(-(-layout.source_size // layout.block_size)):
        entry, = struct.unpack_from("<Q", table, 8 * (block + block // layout.chunk_ratio))
        if entry & 7 == layouts.VHDX_BLOCK_FULLY_PRESENT:
            present.append(block)
    return present


def vhdx_first_payload(layout) -> int:
    return -(-len(layout.head) // MiB) * MiB


def test_fixed_vhdx_keeps_every_block_in_place_and_the_file_its_size(share, tmp_path):
    source = awkward_source(tmp_path / "source.raw")
    layout, _, path = stream(share, source, "vhdx", "fixed", "fixed.vhdx", tmp_path)
    blocks = -(-source.stat().st_size // layout.block_size)
    assert vhdx_present_blocks(path, layout) == list(range(blocks))
    # qemu-img's own fixed VHDX appends the blocks after the space it reserved (twice the size): ce's does not
    assert path.stat().st_size == len(layout.head) + blocks * layout.block_size


def test_dynamic_vhd_blocks_carry_a_full_sector_bitmap(share, tmp_path):
    source = awkward_source(tmp_path / "source.raw")
    layout, _, path = stream(share, source, "vpc", "dynamic", "bitmaps.vhd", tmp_path)
    raw = path.read_bytes()
    entries = struct.unpack_from(f">{-(-layout.source_size // layout.block_size)}I", raw, layout.bat_offset)
    allocated = [n for n, sector in enumerate(entries) if sector != layouts.VHD_UNALLOCATED]
    # 2 MiB blocks with data: 0, 1 (the straddle of 2 MiB), 3 (8 MiB - 4096), 4, 6 (13 MiB + 512), 18 (the tail)
    assert allocated == [0, 1, 3, 4, 6, 18]
    for n in allocated:
        assert raw[entries[n] * 512:entries[n] * 512 + 512] == b"\xff" * 512
    assert raw[:512] == raw[-512:] and raw[:8] == b"conectix"


def test_an_all_zero_disk_sends_only_metadata(share, tmp_path):
    source = tmp_path / "zero.raw"
    write_pieces(source, 64 * MiB, [(5 * MiB, bytes(MiB))])
    layout, stored, path = stream(share, source, "vhdx", "dynamic", "zero.vhdx", tmp_path)
    assert stored.sent == layout.overhead
    assert vhdx_present_blocks(path, layout) == []
    assert_same_disk(source, path, "vhdx", "dynamic")


def test_a_layout_made_for_another_size_is_refused_and_leaves_nothing(share, tmp_path):
    source = awkward_source(tmp_path / "source.raw")
    empty = tmp_path / "other.vhdx"
    disks.create_empty(empty, "vhdx", 64 * MiB, "dynamic")
    with pytest.raises(Exception) as refused:
        share.upload(source, "wrong.vhdx", layout=layouts.for_container(str(empty), "vhdx", "dynamic"))
    assert "its container was made for" in str(refused.value)
    assert not list(share.directory.glob("wrong*"))


def test_a_chunk_crossing_a_block_is_refused(tmp_path):
    empty = tmp_path / "e.vhdx"
    disks.create_empty(empty, "vhdx", 64 * MiB, "dynamic")
    layout = layouts.for_container(str(empty), "vhdx", "dynamic")
    with pytest.raises(layouts.LayoutError, match="crosses"):
        layout.place(8 * MiB - 512, 1024)
    with pytest.raises(layouts.LayoutError, match="outside"):
        layout.place(64 * MiB, 512)


# ---------------------------------------------------------------- local files (disks.convert of a raw disk)

@pytest.mark.parametrize("fmt,subformat", [*CONTAINERS, ("vmdk", "monolithicSparse")])
def test_a_local_conversion_of_a_raw_disk_fills_the_container(tmp_path, fmt, subformat):
    source = awkward_source(tmp_path / "source.raw")
    out = tmp_path / f"out.{fmt}"
    seen: list[float] = []
    converted = disks.convert(source, out, fmt, subformat=subformat, progress=seen.append, method="fill")
    assert converted.subformat == subformat
    assert_same_disk(source, out, fmt, subformat)
    assert seen[-1] == 100 and seen == sorted(set(seen))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out." + fmt, "source.raw"]


def test_a_vmdk_records_each_grain_in_both_grain_tables(tmp_path):
    source = awkward_source(tmp_path / "source.raw")
    out = tmp_path / "out.vmdk"
    disks.create_empty(out, "vmdk", source.stat().st_size)
    empty_size = out.stat().st_size
    layouts.fill(source, out, "vmdk", "monolithicSparse")
    layout = layouts.for_container(str(out), "vmdk", "monolithicSparse")
    raw = out.read_bytes()
    grains = -(-layout.source_size // layout.block_size)
    tables = [[struct.unpack_from("<I", raw, layout.tables[copy][g // layout.entries_per_table] * 512
                                  + 4 * (g % layout.entries_per_table))[0] for g in range(grains)]
              for copy in (0, 1)]
    assert tables[0] == tables[1]
    allocated = [g for g, sector in enumerate(tables[0]) if sector]
    # 64 KiB grains with data: 0, 31 and 32 (2 MiB - 300 straddles them), 127 and 128 (8 MiB - 4096 straddles),
    # 208 (13 MiB + 512) and the partial last grain (the final 1000 bytes; it holds 3 sectors of the disk)
    assert allocated == [0, 31, 32, 127, 128, 208, grains - 1]
    assert out.stat().st_size == empty_size + len(allocated) * layout.block_size
