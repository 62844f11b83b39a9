"""The sample builder's boot facts against the partition table sfdisk wrote: SYSTEM\\MountedDevices, the BIOS
\\Boot\\BCD devices and the boot files on the right volume. The table is parsed here from the raw sectors (MBR at
offset 440 / 446, GPT header and entries) and the hives with regipy, independently of the builder's own numbers.
No appliance: ``plan_job`` writes the table and the hives on the host; the built images' tables are read with
``qemu-img dd``."""
from __future__ import annotations

import struct
import subprocess
import uuid

import pytest
from regipy.registry import RegistryHive

from images.build import plan_job
from images.spec import load_all

SECTOR = 512
MIB = 1 << 20
SPECS = load_all()
MBR_SAMPLES = ["win2016-vda1912", "win2019-vda2203-pvs-bios", "win10-vda2402-pvs-bios"]
GPT_SAMPLES = ["win2019-vda2203-pvs", "bad-two-roots"]
MSR = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
BOOTMGR = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}"
OSLOADER_TYPE = 0x10200003


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Each sample's job planned on the host (raw disk with its table, volumes' files and hives), by name."""
    return {name: plan_job(SPECS[name], tmp_path_factory.mktemp(name)) for name in MBR_SAMPLES + GPT_SAMPLES}


def read_mbr(head: bytes) -> tuple[int, list[dict]]:
    """The disk signature and the used primary entries of an MBR sector."""
    assert head[510:512] == b"\x55\xaa"
    entries = []
    for n in range(4):
        status, ptype, lba, count = struct.unpack_from("<B3xB3xII", head, 446 + 16 * n)
        if ptype:
            entries.append({"active": status == 0x80, "type": ptype, "start": lba * SECTOR, "size": count * SECTOR})
    return struct.unpack_from("<I", head, 440)[0], entries


def read_gpt(head: bytes) -> list[dict]:
    """The used entries of the primary GPT (``head`` = the disk's first sectors)."""
    assert head[SECTOR:SECTOR + 8] == b"EFI PART"
    table_lba, count, size = struct.unpack_from("<QII", head, SECTOR + 72)
    entries = []
    for n in range(count):
        raw = head[table_lba * SECTOR + n * size:][:size]
        if any(raw[:16]):
            entries.append({"type": str(uuid.UUID(bytes_le=raw[:16])).upper(), "guid": raw[16:32],
                            "start": struct.unpack_from("<Q", raw, 32)[0] * SECTOR})
    return entries


def head_of(path, fmt: str, sectors: int) -> bytes:
    out = path.with_name(path.name + ".head")
    subprocess.run(["qemu-img", "dd", "-f", fmt, "-O", "raw", f"bs={SECTOR}", f"count={sectors}", f"if={path}",
                    f"of={out}"], check=True, capture_output=True)
    return out.read_bytes()


def hive(tmp_path, data: bytes) -> RegistryHive:
    path = tmp_path / f"hive-{len(list(tmp_path.iterdir()))}"
    path.write_bytes(data)
    return RegistryHive(str(path))


def mounted_devices(tmp_path, job, volume: str = "system") -> dict[str, bytes]:
    system = hive(tmp_path, job.volumes[volume]["Windows/System32/config/SYSTEM"])
    return {v.name: binary(v.value) for v in system.get_key(r"\MountedDevices").iter_values()}


def binary(value) -> bytes:
    """A REG_BINARY as regipy returns it (bytes, or hex text for short values)."""
    return bytes.fromhex(value) if isinstance(value, str) else bytes(value)


def mbr_id(signature: int, offset: int) -> bytes:
    return struct.pack("<IQ", signature, offset)


def partition_device(blob: bytes) -> tuple[int, int]:
    """(byte offset, disk signature) of an MBR partition device element (reference §6's byte table)."""
    assert len(blob) == 88 and struct.unpack_from("<II", blob, 48) == (0, 1)      # local disk, MBR style
    return struct.unpack_from("<Q", blob, 32)[0], struct.unpack_from("<I", blob, 56)[0]


@pytest.mark.parametrize("name", MBR_SAMPLES)
def test_mbr_mounted_devices_name_the_partitions_sfdisk_wrote(jobs, name, tmp_path):
    job = jobs[name]
    signature, entries = read_mbr(job.raw.read_bytes()[:SECTOR])
    assert signature != 0 and [e["type"] for e in entries] == [0x07] * len(entries)
    values = mounted_devices(tmp_path, job)
    assert all(len(data) == 12 for data in values.values())
    volumes = {data for key, data in values.items() if key.startswith("\\??\\Volume{")}
    assert volumes == {mbr_id(signature, e["start"]) for e in entries}
    assert values["\\DosDevices\\C:"] == mbr_id(signature, entries[-1]["start"])      # Windows: the last partition
    assert [key for key in values if key.startswith("\\DosDevices\\")] == ["\\DosDevices\\C:"]


@pytest.mark.parametrize("name", MBR_SAMPLES)
def test_bios_bcd_boots_the_active_partition_into_windows(jobs, name, tmp_path):
    job = jobs[name]
    signature, entries = read_mbr(job.raw.read_bytes()[:SECTOR])
    (active,) = [e for e in entries if e["active"]]
    windows = entries[-1]
    boot_role = "boot" if len(entries) > 1 else "system"
    files = job.volumes[boot_role]
    assert {"bootmgr", "Boot/BCD"} <= set(files)
    store = hive(tmp_path, files["Boot/BCD"])
    bootmgr = store.get_key(rf"\Objects\{BOOTMGR}\Elements\11000001").get_value("Element")
    assert partition_device(binary(bootmgr)) == (active["start"], signature)
    default = store.get_key(rf"\Objects\{BOOTMGR}\Elements\23000003").get_value("Element")
    loader = store.get_key(rf"\Objects\{default}")
    assert loader.get_subkey("Description").get_value("Type") == OSLOADER_TYPE
    for element in ("11000001", "21000001"):                    # ApplicationDevice, OsDevice
        blob = loader.get_subkey("Elements").get_subkey(element).get_value("Element")
        assert partition_device(binary(blob)) == (windows["start"], signature)


def test_the_pvs_samples_have_the_layouts_convert_and_upgrade_start_from(jobs):
    size = {name: SPECS[name].size_mib * MIB for name in MBR_SAMPLES}
    _, reserved = read_mbr(jobs["win2019-vda2203-pvs-bios"].raw.read_bytes()[:SECTOR])
    assert [(e["active"], e["start"], e["size"]) for e in reserved] == [
        (True, MIB, 100 * MIB), (False, 101 * MIB, size["win2019-vda2203-pvs-bios"] - 101 * MIB)]
    _, single = read_mbr(jobs["win10-vda2402-pvs-bios"].raw.read_bytes()[:SECTOR])
    assert [(e["active"], e["start"], e["size"]) for e in single] == [
        (True, MIB, size["win10-vda2402-pvs-bios"] - MIB)]
    windows = jobs["win10-vda2402-pvs-bios"].volumes["system"]
    assert {"bootmgr", "Boot/BCD", "Windows/System32/config/SYSTEM"} <= set(windows)


@pytest.mark.parametrize("name", GPT_SAMPLES)
def test_gpt_mounted_devices_name_the_partitions_by_guid(jobs, name, tmp_path):
    job = jobs[name]
    entries = read_gpt(job.raw.read_bytes()[:34 * SECTOR])
    volumes = [e for e in entries if e["type"] != MSR]
    windows = [e for e in entries if e["type"] == "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"]
    roles = ["system", "system2"] if len(windows) == 2 else ["system"]
    for role, own in zip(roles, windows):
        values = mounted_devices(tmp_path, job, role)
        assert all(len(data) == 24 and data.startswith(b"DMIO:ID:") for data in values.values())
        assert values["\\DosDevices\\C:"] == b"DMIO:ID:" + own["guid"]
        assert {data for key, data in values.items() if key.startswith("\\??\\Volume{")} == {
            b"DMIO:ID:" + e["guid"] for e in volumes}


@pytest.mark.parametrize("name", MBR_SAMPLES + GPT_SAMPLES)
def test_built_images_carry_the_table_the_builder_planned(samples, jobs, name):
    """What the unit tests above read is what the built sample holds: its first sectors, byte for byte."""
    spec = samples[name]
    sectors = 1 if spec.partition_table == "mbr" else 34
    assert head_of(spec.path, spec.format, sectors) == jobs[name].raw.read_bytes()[:sectors * SECTOR]


def test_windows_boot_files_are_where_bcdboot_takes_them(jobs):
    files = jobs["win2019-vda2203-pvs-bios"].volumes["system"]
    for name in ("EFI/bootmgfw.efi", "EFI/bootmgr.efi", "EFI/memtest.efi", "EFI/en-US/bootmgfw.efi.mui"):
        assert files[f"Windows/Boot/{name}"][:2] == b"MZ", name
    assert {"Windows/Boot/PCAT/bootmgr", "Windows/Boot/Fonts/wgl4_boot.ttf"} <= set(files)
    template = files["Windows/System32/config/BCD-Template"]
    assert template[:4] == b"regf"
    esp = jobs["win2019-vda2203-pvs"].volumes["esp"]
    assert esp["EFI/Microsoft/Boot/bootmgfw.efi"] == esp["EFI/Boot/bootx64.efi"] == files["Windows/Boot/EFI/bootmgfw.efi"]
