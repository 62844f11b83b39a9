"""ce.disks.convert's two local methods for a raw disk going into a VHDX, VHD or VMDK -- ce's own fill of the empty
container qemu-img makes (ce.disks.layouts) and ``qemu-img convert`` -- write the same disk. Checked by qemu-img
compare (against the source and against each other) and by readers that are neither qemu's nor ce's: libvhdi
(pyvhdi and vhdiinfo) for VHD / VHDX, dissect.hypervisor and libvmdk's vmdkinfo for VMDK. Which method runs for a
pair is conversion.FILL_LOCALLY, measured by ``bench/disks.py --both-methods``."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from ce import disks
from ce.disks import conversion
from ce.errors import Canceled, ConversionFailed

pytest.importorskip("pyvhdi", reason="python3-libvhdi (debian-packages-test.txt)")
vmdk_reader = pytest.importorskip("dissect.hypervisor.disk.vmdk", reason="dissect.hypervisor (the test extra)")

from tests.support.vhdreaders import media as libvhdi_media  # noqa: E402

MiB = 1 << 20
GRAIN = 64 << 10                  # qemu-img's VMDK grain
PAIRS = [("vhdx", "dynamic"), ("vhdx", "fixed"), ("vpc", "dynamic"), ("vpc", "fixed"), ("vmdk", "monolithicSparse")]
READERS = {"vhdx": "vhdiinfo", "vpc": "vhdiinfo", "vmdk": "vmdkinfo"}
READER_TYPES = {"dynamic": "Dynamic", "fixed": "Fixed", "monolithicSparse": "Monolithic sparse"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("methods")


@pytest.fixture(scope="module")
def source(workdir) -> Path:
    """37 MiB + 3 sectors (every format's last block is partial): data across 2 MiB, 8 MiB and 32 MiB block
    boundaries and 64 KiB grains, a lone sector, a dense MiB, written zeros (allocated, all zero), a hole, and data
    in the last sectors."""
    path = workdir / "source.raw"
    size = 37 * MiB + 3 * 512
    with open(path, "wb") as f:
        f.truncate(size)
        for at, data in ((0, os.urandom(700)), (2 * MiB - 300, os.urandom(600)), (8 * MiB - 4096, os.urandom(8192)),
                         (13 * MiB + 512, os.urandom(512)), (16 * MiB, os.urandom(MiB)), (20 * MiB, bytes(4 * MiB)),
                         (32 * MiB - 100, os.urandom(200)), (size - 1000, os.urandom(1000))):
            f.seek(at)
            f.write(data)
    return path


@pytest.fixture(scope="module")
def converted(source, workdir):
    """The source converted once per (format, subformat, method)."""
    made: dict[tuple, Path] = {}

    def get(fmt: str, subformat: str, method: str) -> Path:
        key = (fmt, subformat, method)
        if key not in made:
            made[key] = workdir / f"{subformat}-{method}.{fmt}"
            result = disks.convert(source, made[key], fmt, subformat=subformat, method=method)
            assert (result.format, result.subformat, result.virtual_size) == (fmt, subformat,
                                                                              source.stat().st_size)
        return made[key]
    return get


def independent_bytes(path: Path, fmt: str) -> tuple[int, bytes]:
    """(virtual size, contents) as libvhdi (VHD, VHDX) or dissect.hypervisor (VMDK) reads the file. dissect stops
    at a partial last grain (IndexError, qemu-img's files too), so for a VMDK the contents end at the last whole
    grain; qemu-img compare covers the tail."""
    if fmt != "vmdk":
        return libvhdi_media(path)
    with open(path, "rb") as f:
        disk = vmdk_reader.VMDK(f)
        return disk.size, disk.read(disk.size - disk.size % GRAIN)


@pytest.mark.parametrize("fmt,subformat", PAIRS)
def test_both_methods_write_the_source_disk(source, converted, fmt, subformat):
    by_fill, by_qemu = converted(fmt, subformat, "fill"), converted(fmt, subformat, "qemu-img")
    for out in (by_fill, by_qemu):
        assert disks.compare(source, out, "raw", fmt), out.name
    assert disks.compare(by_fill, by_qemu, fmt, fmt)


@pytest.mark.parametrize("fmt,subformat", PAIRS)
@pytest.mark.parametrize("method", conversion.METHODS)
def test_readers_that_are_not_qemu_read_the_source(source, converted, fmt, subformat, method):
    out = converted(fmt, subformat, method)
    size, data = independent_bytes(out, fmt)
    assert size == source.stat().st_size and len(data) > size - GRAIN
    assert data == source.read_bytes()[:len(data)]
    if not shutil.which(READERS[fmt]):
        pytest.skip(f"{READERS[fmt]} not installed (libvhdi-utils / libvmdk-utils)")
    report = subprocess.run([READERS[fmt], str(out)], capture_output=True, text=True, check=True).stdout
    assert re.search(rf"Disk type\s*:\s*{READER_TYPES[subformat]}\b", report), report
    assert f"({source.stat().st_size} bytes)" in report, report


def test_the_method_asked_for_is_the_one_that_runs(source, converted):
    """A fixed VHDX tells them apart: ce puts block n where qemu-img's empty container reserves room for it, while
    qemu-img's own convert appends the blocks after that room, doubling the file."""
    size = source.stat().st_size
    by_fill, by_qemu = converted("vhdx", "fixed", "fill"), converted("vhdx", "fixed", "qemu-img")
    assert by_fill.stat().st_size < size + 16 * MiB < 2 * size < by_qemu.stat().st_size


def test_fill_locally_decides_per_pair_only_for_a_raw_source(source, converted):
    raw = disks.info(source, "raw")
    assert set(conversion.FILL_LOCALLY) == set(PAIRS)
    for (fmt, subformat), fill in conversion.FILL_LOCALLY.items():
        assert conversion.fills(raw, fmt, subformat) is fill
        assert conversion.fills(raw, fmt, subformat, "fill") and not conversion.fills(raw, fmt, subformat, "qemu-img")
    assert not conversion.fills(raw, "vmdk", "streamOptimized", "fill")       # compressed grains: qemu-img's
    assert not conversion.fills(raw, "qcow2", None, "fill")
    as_vhdx = disks.info(converted("vhdx", "dynamic", "fill"))
    assert not conversion.fills(as_vhdx, "vpc", "dynamic", "fill")               # only a raw disk has a layout
    with pytest.raises(ValueError, match="unknown conversion method 'dd'"):
        conversion.fills(raw, "vhdx", "dynamic", "dd")


def test_a_fill_canceled_mid_way_keeps_nothing(tmp_path):
    source = tmp_path / "dense.raw"
    with open(source, "wb") as f:
        for _ in range(32):
            f.write(os.urandom(MiB))
    cancel = threading.Event()
    seen: list[float] = []

    def progress(percent: float) -> None:
        seen.append(percent)
        if percent >= 10:
            cancel.set()

    with pytest.raises(Canceled):
        disks.convert(source, tmp_path / "out.vhdx", "vhdx", method="fill", progress=progress, cancel=cancel)
    assert seen and seen[-1] < 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.raw"]


def test_a_failing_qemu_img_convert_reports_its_reason_and_keeps_nothing(tmp_path):
    huge = tmp_path / "huge.raw"
    with open(huge, "wb") as f:
        f.truncate(2100 << 30)                                  # sparse, and over the 2040 GiB VHD limit
    with pytest.raises(disks.ConversionFailed, match="to VHD failed: .*Disk size is too large, max size is 2040 GiB"):
        disks.convert(huge, tmp_path / "huge.vhd", "vhd", method="qemu-img")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.raw"]


@contextmanager
def small_tmpfs(path: Path, size_mb: int):
    """A tmpfs of ``size_mb`` MiB mounted at ``path`` (root only: the test skips elsewhere)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=False,
                   capture_output=True)
    if not os.path.ismount(path):
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def dense_file(path: Path, size_mb: int) -> Path:
    path.write_bytes(os.urandom(size_mb * MiB))
    return path


@pytest.mark.parametrize("fmt,subformat", PAIRS)
@pytest.mark.parametrize("source_on", ["the same tmpfs", "another file system"])
def test_a_fill_that_runs_out_of_space_fails_and_keeps_nothing(tmp_path, fmt, subformat, source_on):
    """A full file system under the fill: from the same tmpfs the data is copied in the kernel (copy_file_range),
    from another file system read and written by ce; either way the write fails mid-way."""
    with small_tmpfs(tmp_path / "small", 24) as small:
        same = source_on == "the same tmpfs"                        # 8 MiB left for 16, or 24 MiB for 32
        source = dense_file((small if same else tmp_path) / "dense.raw", 16 if same else 32)
        before = sorted(small.iterdir())
        with pytest.raises(ConversionFailed, match="No space left on device") as failed:
            disks.convert(source, small / f"out.{fmt}", fmt, subformat=subformat, method="fill")
        assert failed.value.code == "disk_conversion_failed" and "dense.raw" in str(failed.value)
        assert sorted(small.iterdir()) == before


@pytest.mark.parametrize("fmt,subformat", PAIRS)
def test_a_fill_without_a_kernel_copy_writes_the_same_disk(source, converted, tmp_path, fmt, subformat):
    """copy_file_range cannot copy from a tmpfs to another file system: ce reads and writes the bytes itself."""
    with small_tmpfs(tmp_path / "small", 64) as small:
        elsewhere = small / source.name
        shutil.copyfile(source, elsewhere)
        out = tmp_path / f"out.{fmt}"
        disks.convert(elsewhere, out, fmt, subformat=subformat, method="fill")
    assert disks.compare(source, out, "raw", fmt)
    assert disks.compare(converted(fmt, subformat, "fill"), out, fmt, fmt)
    size, data = independent_bytes(out, fmt)
    assert size == source.stat().st_size and data == source.read_bytes()[:len(data)]
    assert out.stat().st_size == converted(fmt, subformat, "fill").stat().st_size
