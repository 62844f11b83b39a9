"""ce.disks against the real qemu-img 7.2, with libvhdi/libvmdk and our own footer parsing as second opinions."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from ce import disks
from ce.disks import qemuimg
from ce.errors import Canceled, DiskError, DiskNotFound, DiskUnreadable, EmptyDisk

MiB = 1 << 20
SAMPLE_SIZE = 24 * MiB
END_MARKER = b"ce-sample-last-sector"


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("disks")


@pytest.fixture(scope="module")
def sample(workdir) -> Path:
    """Recognisable raw disk: per MiB, random data / written zeros / a hole, and a marker in the last sector."""
    path = workdir / "sample.raw"
    with open(path, "wb") as f:
        for i in range(SAMPLE_SIZE // MiB):
            f.seek(i * MiB)
            if i % 3 == 0:
                f.write(os.urandom(MiB))
            elif i % 3 == 1:
                f.write(bytes(MiB))
        f.seek(SAMPLE_SIZE - 512)
        f.write(END_MARKER.ljust(512, b"\0"))
    return path


@pytest.fixture(scope="module")
def dense(workdir) -> Path:
    """96 MiB of random data: a streamOptimized VMDK conversion of it runs for about a second (zlib-bound)."""
    path = workdir / "dense.raw"
    with open(path, "wb") as f:
        for _ in range(96):
            f.write(os.urandom(MiB))
    return path


@pytest.fixture(scope="module")
def sample_as(sample, workdir):
    """Convert the sample once per (format, subformat) and share the result."""
    made: dict[tuple, Path] = {}

    def get(fmt: str, subformat: str | None = None) -> Path:
        key = (fmt, subformat)
        if key not in made:
            made[key] = workdir / f"sample-{fmt}-{subformat or 'default'}.{fmt}"
            disks.convert(sample, made[key], fmt, subformat=subformat)
        return made[key]
    return get


def truncated_copy(src: Path, dst: Path, keep: int) -> Path:
    with open(src, "rb") as f:
        dst.write_bytes(f.read(keep))
    return dst


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def vhd_footer(path: Path) -> dict:
    """Our own reading of the 512-byte VHD footer (Microsoft VHD specification), independent of ce.disks."""
    with open(path, "rb") as f:
        f.seek(-512, os.SEEK_END)
        raw = f.read(512)
    zeroed = raw[:64] + b"\0\0\0\0" + raw[68:]
    return {"cookie": raw[:8], "current_size": struct.unpack_from(">Q", raw, 48)[0],
            "disk_type": struct.unpack_from(">I", raw, 60)[0],
            "checksum_ok": struct.unpack_from(">I", raw, 64)[0] == (~sum(zeroed) & 0xFFFFFFFF)}


def mark_differencing(path: Path) -> None:
    """Turn a dynamic VHD into a (parentless) differencing one by rewriting both footers' disk type."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for offset in (0, size - 512):
            f.seek(offset)
            footer = bytearray(f.read(512))
            struct.pack_into(">II", footer, 60, 4, 0)
            struct.pack_into(">I", footer, 64, ~sum(footer) & 0xFFFFFFFF)
            f.seek(offset)
            f.write(footer)


def independent_info(tool: str, path: Path) -> str:
    if not shutil.which(tool):
        pytest.skip(f"{tool} not installed (Debian libvhdi-utils / libvmdk-utils)")
    return subprocess.run([tool, str(path)], capture_output=True, text=True, check=True).stdout


# ---------------------------------------------------------------- formats and round trips

def test_user_facing_format_names_map_to_qemu_names():
    assert disks.DISK_FORMATS == {"raw": "raw", "qcow2": "qcow2", "vhd": "vpc", "vhdx": "vhdx", "vmdk": "vmdk"}
    assert disks.qemu_format("VHD") == "vpc" and disks.qemu_format("vpc") == "vpc"
    with pytest.raises(disks.UnsupportedFormat, match="vdi"):
        disks.qemu_format("vdi")


ROUND_TRIPS = [
    ("qcow2", None, None),
    ("vhdx", None, "dynamic"),
    ("vhdx", "fixed", "fixed"),
    ("vhd", None, "dynamic"),
    ("vhd", "fixed", "fixed"),
    ("vmdk", None, "monolithicSparse"),
    ("vmdk", "streamOptimized", "streamOptimized"),
    ("raw", None, None),
]


@pytest.mark.parametrize("fmt,subformat,expected_subformat", ROUND_TRIPS)
def test_round_trip_preserves_every_byte(sample, sample_as, tmp_path, fmt, subformat, expected_subformat):
    image = sample_as(fmt, subformat)
    described = disks.info(image)                       # probed, not told
    assert (described.format, described.subformat) == (disks.DISK_FORMATS[fmt], expected_subformat)
    assert described.virtual_size == SAMPLE_SIZE
    assert disks.compare(sample, image)

    back = disks.convert(image, tmp_path / "back.raw", "raw")
    assert back.path == str(tmp_path / "back.raw") and back.virtual_size == SAMPLE_SIZE
    assert (tmp_path / "back.raw").read_bytes() == sample.read_bytes()
    assert leftovers(tmp_path) == ["back.raw"]
    assert not list(image.parent.glob("*.partial"))


@pytest.mark.parametrize("fmt,subformat,tool,disk_type", [
    ("vhd", "fixed", "vhdiinfo", "Fixed"), ("vhd", None, "vhdiinfo", "Dynamic"),
    ("vhdx", None, "vhdiinfo", "Dynamic"), ("vhdx", "fixed", "vhdiinfo", "Fixed"),
    ("vmdk", None, "vmdkinfo", "Monolithic sparse"), ("vmdk", "streamOptimized", "vmdkinfo", "Stream optimized"),
])
def test_independent_reader_agrees(sample_as, fmt, subformat, tool, disk_type):
    report = independent_info(tool, sample_as(fmt, subformat))
    assert re.search(rf"Disk type\s*:\s*{disk_type}\b", report)
    assert f"({SAMPLE_SIZE} bytes)" in report


def test_fixed_vhd_has_footer_and_is_not_mistaken_for_raw(sample_as):
    vhd = sample_as("vhd", "fixed")
    footer = vhd_footer(vhd)
    assert footer == {"cookie": b"conectix", "current_size": SAMPLE_SIZE, "disk_type": 2, "checksum_ok": True}
    assert vhd.stat().st_size == SAMPLE_SIZE + 512

    plain_probe = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(vhd)],
                                            capture_output=True, check=True).stdout)
    assert (plain_probe["format"], plain_probe["virtual-size"]) == ("raw", SAMPLE_SIZE + 512)   # the gotcha
    assert disks.probe_format(vhd) == "vpc"
    described = disks.info(vhd)
    assert (described.format, described.subformat, described.virtual_size) == ("vpc", "fixed", SAMPLE_SIZE)
    disks.verify_azure_vhd(vhd)


def test_info_reports_the_qemu_img_facts(sample_as):
    described = disks.info(sample_as("vhdx"))
    assert described.cluster_size and described.dirty is False and described.is_block_device is False
    assert 0 < described.actual_size
    assert json.loads(json.dumps(described.to_json()))["format"] == "vhdx"


# ---------------------------------------------------------------- Azure

def test_azure_fixed_rounds_an_unaligned_source_up_to_whole_mib(workdir, tmp_path):
    odd = tmp_path / "odd.raw"
    odd.write_bytes(os.urandom(3 * MiB + 1536))
    out = disks.convert(odd, tmp_path / "azure.vhd", "vhd", azure_fixed=True)

    assert (out.format, out.subformat, out.virtual_size) == ("vpc", "fixed", 4 * MiB)
    vhd = tmp_path / "azure.vhd"
    assert (vhd.stat().st_size - 512) % MiB == 0
    assert vhd_footer(vhd)["current_size"] == 4 * MiB and vhd_footer(vhd)["checksum_ok"]
    data = vhd.read_bytes()
    assert data[:odd.stat().st_size] == odd.read_bytes()
    assert data[odd.stat().st_size:4 * MiB] == bytes(4 * MiB - odd.stat().st_size)
    assert disks.compare(odd, vhd)
    assert odd.stat().st_size == 3 * MiB + 1536                 # the source is never resized
    assert leftovers(tmp_path) == ["azure.vhd", "odd.raw"]


def test_azure_rule_rejects_vhds_azure_would_refuse(sample_as, tmp_path):
    odd = tmp_path / "odd.raw"
    odd.write_bytes(os.urandom(3 * MiB + 1536))
    plain = disks.convert(odd, tmp_path / "plain.vhd", "vhd", subformat="fixed")
    assert plain.virtual_size == 3 * MiB + 1536                 # force_size keeps the odd size
    with pytest.raises(disks.AzureVhdInvalid, match="not a whole number of MiB"):
        disks.verify_azure_vhd(tmp_path / "plain.vhd")
    with pytest.raises(disks.AzureVhdInvalid, match="dynamic VHD"):
        disks.verify_azure_vhd(sample_as("vhd"))
    with pytest.raises(disks.AzureVhdInvalid, match="no VHD footer"):
        disks.verify_azure_vhd(sample_as("qcow2"))
    with pytest.raises(disks.UnsupportedFormat, match="fixed VHD"):
        disks.convert(odd, tmp_path / "x.vhdx", "vhdx", azure_fixed=True)


# ---------------------------------------------------------------- progress, cancel, failures

def test_progress_rises_to_100(sample, tmp_path):
    seen: list[float] = []
    disks.convert(sample, tmp_path / "p.vhdx", "vhdx", progress=seen.append)
    assert len(seen) >= 3 and seen[-1] == 100.0
    assert all(a < b for a, b in zip(seen, seen[1:]))


def test_progress_parser_handles_split_chunks():
    seen: list[float] = []
    meter = qemuimg.ProgressMeter(seen.append)
    for chunk in ["    (0.00/100%)\r    (1", "2.50/10", "0%)\r    (12.50/100%)\r  (25.00/100%)\r"]:
        meter.feed(chunk)
    assert seen == [0.0, 12.5, 25.0]


def test_cancel_kills_qemu_img_and_keeps_nothing(dense, tmp_path):
    cancel = threading.Event()
    seen: list[float] = []

    def progress(percent):
        seen.append(percent)
        if percent > 0:
            cancel.set()

    with pytest.raises(Canceled):
        disks.convert(dense, tmp_path / "out.vmdk", "vmdk", subformat="streamOptimized",
                      progress=progress, cancel=cancel)
    assert seen and seen[-1] < 100.0                            # stopped mid-way, not after the end
    assert leftovers(tmp_path) == []


def test_cancel_before_start_writes_nothing(sample, tmp_path):
    with pytest.raises(Canceled):
        disks.convert(sample, tmp_path / "out.qcow2", "qcow2", cancel=lambda: True)
    assert leftovers(tmp_path) == []


def test_a_failing_progress_callback_stops_the_conversion(dense, tmp_path):
    def progress(percent):
        if percent > 0:
            raise RuntimeError("progress sink down")

    with pytest.raises(RuntimeError, match="progress sink down"):
        disks.convert(dense, tmp_path / "out.vmdk", "vmdk", subformat="streamOptimized", progress=progress)
    assert leftovers(tmp_path) == []


def test_qemu_img_failure_leaves_nothing(tmp_path):
    huge = tmp_path / "huge.raw"
    with open(huge, "wb") as f:
        f.truncate(2100 << 30)                                  # sparse, and over the 2040 GiB VHD limit
    with pytest.raises(disks.ConversionFailed, match="too large for file format 'vpc'"):      # qemu-img create's
        disks.convert(huge, tmp_path / "huge.vhd", "vhd", method="fill")
    assert leftovers(tmp_path) == ["huge.raw"]


def test_bad_requests_fail_before_writing(sample, tmp_path):
    with pytest.raises(DiskError, match="does not exist") as missing_dir:
        disks.convert(sample, tmp_path / "nowhere" / "out.vhdx", "vhdx")
    assert missing_dir.value.code == "output_dir_missing"
    with pytest.raises(disks.UnsupportedFormat, match="no subformat 'monolithicFlat'"):
        disks.convert(sample, tmp_path / "out.vmdk", "vmdk", subformat="monolithicFlat")
    with pytest.raises(disks.UnsupportedFormat):
        disks.convert(sample, tmp_path / "out.vdi", "vdi")
    assert leftovers(tmp_path) == []


def test_existing_destination_is_kept_unless_overwrite(sample, tmp_path):
    dst = tmp_path / "out.qcow2"
    dst.write_bytes(b"precious")
    with pytest.raises(disks.DestinationExists, match="already exists"):
        disks.convert(sample, dst, "qcow2")
    assert dst.read_bytes() == b"precious" and leftovers(tmp_path) == ["out.qcow2"]

    disks.convert(sample, dst, "qcow2", overwrite=True)
    assert disks.info(dst).format == "qcow2" and disks.compare(sample, dst)


def test_differencing_vhd_is_described_and_refused_as_a_source(sample_as, tmp_path):
    child = tmp_path / "child.vhd"
    shutil.copy(sample_as("vhd"), child)
    mark_differencing(child)
    assert disks.info(child).subformat == "differencing"
    if shutil.which("vhdiinfo"):
        assert re.search(r"Disk type\s*:\s*Differential", independent_info("vhdiinfo", child))
    with pytest.raises(disks.UnsupportedFormat, match="without its parent"):
        disks.convert(child, tmp_path / "out.vhdx", "vhdx")
    assert leftovers(tmp_path) == ["child.vhd"]


# ---------------------------------------------------------------- unreadable inputs

@pytest.mark.parametrize("fmt,subformat", [("qcow2", None), ("vhdx", None), ("vmdk", None),
                                           ("vmdk", "streamOptimized"), ("vhd", None)])
@pytest.mark.parametrize("keep", ["header-only", "three-quarters"])
def test_truncated_images_are_unreadable_with_qemu_img_reason(sample_as, tmp_path, fmt, subformat, keep):
    image = sample_as(fmt, subformat)
    size = 100_000 if keep == "header-only" else image.stat().st_size * 3 // 4
    broken = truncated_copy(image, tmp_path / f"broken.{fmt}", size)
    with pytest.raises(DiskUnreadable) as err:
        disks.info(broken)
    assert err.value.code == "disk_unreadable" and str(broken) in err.value.message
    assert re.search(r"truncated|after EOF|end of (the )?file|Invalid argument", err.value.message)
    with pytest.raises(DiskUnreadable):
        disks.convert(broken, tmp_path / "out.raw", "raw")
    assert leftovers(tmp_path) == [broken.name]


def test_empty_missing_and_non_disk_paths(tmp_path):
    (tmp_path / "empty.raw").touch()
    with pytest.raises(EmptyDisk, match="0 bytes"):
        disks.info(tmp_path / "empty.raw")
    with pytest.raises(DiskNotFound, match="does not exist"):
        disks.info(tmp_path / "missing.vhdx")
    with pytest.raises(DiskNotFound):
        disks.verify_azure_vhd(tmp_path / "missing.vhd")
    with pytest.raises(DiskUnreadable, match="not a disk image file"):
        disks.info(tmp_path)


@pytest.fixture
def loop_device():
    """Attach an image read-only to a free loop device (needs root); detached afterwards."""
    if not shutil.which("losetup"):
        pytest.skip("losetup not installed")
    attached: list[str] = []

    def attach(image: Path) -> str:
        run = subprocess.run(["losetup", "--read-only", "--find", "--show", str(image)], capture_output=True, text=True)
        if run.returncode != 0:
            pytest.skip(f"no loop device here: {run.stderr.strip()}")
        attached.append(run.stdout.strip())
        return attached[-1]
    yield attach
    for device in attached:
        subprocess.run(["losetup", "--detach", device], check=True)


@pytest.mark.parametrize("fmt,subformat,qemu_fmt", [("vhd", "fixed", "vpc"), ("vhdx", None, "vhdx")])
def test_block_devices_are_raw_unless_told_otherwise(sample_as, loop_device, fmt, subformat, qemu_fmt):
    """A block device's contents never choose its format (issue 16); given one, it is described like a file."""
    image = sample_as(fmt, subformat)
    device = loop_device(image)
    as_is = disks.info(device)
    assert (as_is.format, as_is.is_block_device, as_is.virtual_size) == ("raw", True, disks.byte_size(device))
    described = disks.info(device, fmt)
    assert described.is_block_device
    assert (described.format, described.virtual_size) == (qemu_fmt, SAMPLE_SIZE)
    assert described.subformat == disks.info(image).subformat


# ---------------------------------------------------------------- check, measure, compare

def test_check_results(sample, sample_as, tmp_path):
    healthy = disks.check(sample_as("qcow2"))
    assert healthy.supported and healthy.ok and healthy.message == "no errors found"

    raw = disks.check(sample)                                   # qemu-img exits 63: not an error
    assert not raw.supported and raw.ok and "cannot check raw" in raw.message

    qcow2 = sample_as("qcow2")
    damaged = disks.check(truncated_copy(qcow2, tmp_path / "t.qcow2", qcow2.stat().st_size * 3 // 4))
    assert damaged.supported and not damaged.ok and damaged.corruptions > 0
    assert "corruptions" in damaged.message and "exceeding the end of the file" in damaged.message

    vmdk = sample_as("vmdk")
    with pytest.raises(DiskUnreadable, match="points after EOF"):
        disks.check(truncated_copy(vmdk, tmp_path / "t.vmdk", vmdk.stat().st_size * 3 // 4))


def test_measure(sample_as):
    needed = disks.measure(sample_as("vhdx"), "qcow2")
    assert 8 * MiB <= needed.required <= needed.fully_allocated      # at least the random MiBs
    with pytest.raises(disks.UnsupportedFormat, match="only qcow2 and raw"):
        disks.measure(sample_as("qcow2"), "vhdx")


def test_compare_notices_a_single_changed_byte(sample, tmp_path):
    changed = tmp_path / "changed.raw"
    shutil.copy(sample, changed)
    with open(changed, "r+b") as f:
        f.seek(SAMPLE_SIZE // 2 + 12345)
        f.write(b"\xff")
    assert not disks.compare(sample, changed)
    assert disks.compare(sample, changed, "raw", "raw") is False


# ---------------------------------------------------------------- differencing children

def test_child_reads_as_its_parent(sample, tmp_path):
    parent = tmp_path / "parent.qcow2"
    disks.convert(sample, parent, "qcow2")
    (tmp_path / "versions").mkdir()
    child = tmp_path / "versions" / "child.qcow2"

    made = disks.create_child(parent, child, "qcow2")
    assert made.path == str(child) and made.format == "qcow2" and made.virtual_size == SAMPLE_SIZE
    assert (made.backing_file, made.backing_format) == ("../parent.qcow2", "qcow2")
    assert disks.compare(child, parent)
    disks.convert(child, tmp_path / "flat.raw", "raw")
    assert (tmp_path / "flat.raw").read_bytes() == sample.read_bytes()
    assert not list(tmp_path.rglob("*.partial"))


def test_child_whose_parent_is_missing_is_described_but_not_converted(sample, tmp_path):
    parent = tmp_path / "parent.qcow2"
    disks.convert(sample, parent, "qcow2")
    disks.create_child(parent, tmp_path / "child.qcow2")
    parent.unlink()
    described = disks.info(tmp_path / "child.qcow2")
    assert described.backing_file == "parent.qcow2" and disks.check(tmp_path / "child.qcow2").ok
    with pytest.raises(disks.ConversionFailed, match="Could not open backing file"):
        disks.convert(tmp_path / "child.qcow2", tmp_path / "flat.raw", "raw")
    assert leftovers(tmp_path) == ["child.qcow2"]


def test_child_of_a_fixed_vhd_names_the_vpc_format(sample, sample_as, tmp_path):
    parent = tmp_path / "base.vhd"
    shutil.copy(sample_as("vhd", "fixed"), parent)
    made = disks.create_child(parent, tmp_path / "child.qcow2")
    assert (made.backing_file, made.backing_format) == ("base.vhd", "vpc")
    assert disks.compare(tmp_path / "child.qcow2", sample)


@pytest.mark.parametrize("child_fmt", ["vhdx", "vhd"])
def test_vhd_and_vhdx_children_are_refused_by_qemu_img(sample_as, tmp_path, child_fmt):
    with pytest.raises(disks.ChildDiskFailed, match="Backing file not supported"):
        disks.create_child(sample_as("vhdx"), tmp_path / f"child.{child_fmt}", "vhdx", child_fmt)
    assert leftovers(tmp_path) == []
