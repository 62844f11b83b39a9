"""BCD stores (ce.windows.bcd): the 88-byte partition device blob, the UEFI store built from a BCD-Template, and
the boot entries read back -- each checked with regipy (an independent regf parser) and a device parser written
here from the reference's byte table, not with ce's own decoder. No appliance: hive files only."""
from __future__ import annotations

import random
import struct
import uuid

import pytest
from regipy.registry import RegistryHive

from ce.errors import BcdTemplateUnusable
from ce.registry import sha256_file
from ce.windows.bcd import (
    build_uefi_store, decode_device, encode_gpt_partition, encode_mbr_partition, read_boot_entries,
)
from images import bcd as sample
from images.build import corrupt_hive, make_dirty, make_hive
from tests.support.bcdread import BOOTMGR, MEMDIAG, element, object_type, parse_partition_device

GLOBALSETTINGS = "{7ea2e1ac-2e61-4728-aaa3-896d9d0a9f0e}"
BOOTLOADERSETTINGS = "{6efb52bf-1766-41db-a6b3-0ee5eff72bd7}"
RESUMELOADERSETTINGS = "{1afa9c49-16ab-4a5c-901b-212802da9460}"
ESP = "3F1D7A55-0B5E-4C1B-9A0E-1D2C3B4A5F60"
WINDOWS = "A7E40C2B-9D61-4F3E-8B2A-6C5D4E3F2A10"
DISK = "5B8C9D0E-1F2A-4B3C-8D4E-5F6A7B8C9D0E"
LOADER = "{0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3}"
SIGNATURE, BOOT_OFFSET, WINDOWS_OFFSET = 0x5EED1234, 1 << 20, 101 << 20


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("bcd")
    make_hive(d / "BCD-Template", sample.ROOT_NAME, sample.template_values())
    make_hive(d / "BIOS-BCD", sample.ROOT_NAME,
              sample.bios_store_values(SIGNATURE, WINDOWS_OFFSET, BOOT_OFFSET, loader_guid=LOADER))
    before = sha256_file(d / "BCD-Template")
    summary = build_uefi_store(d / "BCD-Template", d / "BCD", esp_partition_guid=ESP,
                               windows_partition_guid=WINDOWS, disk_guid=DISK, loader_guid=LOADER,
                               description="Windows Server")
    assert sha256_file(d / "BCD-Template") == before, "the template was written"
    return d, summary


# ---------------------------------------------------------------- the device blob

def test_gpt_partition_device_is_the_reference_layout():
    blob = encode_gpt_partition(WINDOWS, DISK)
    expected = (bytes(16) + struct.pack("<IIII", 6, 0, 0x48, 0) + uuid.UUID(WINDOWS).bytes_le
                + struct.pack("<II", 0, 0) + uuid.UUID(DISK).bytes_le + bytes(16))
    assert blob == expected
    assert blob[32:36] == bytes.fromhex("2b0ce4a7")          # the GUID's first field, little-endian
    assert decode_device(blob) == {"deviceType": "partition", "flags": 0, "length": 88, "kind": "gpt_partition",
                                   "partitionGuid": WINDOWS, "diskGuid": DISK}


def test_mbr_partition_device_is_the_reference_layout():
    blob = encode_mbr_partition(WINDOWS_OFFSET, SIGNATURE)
    assert blob[32:48] == bytes.fromhex("0000500600000000") + bytes(8)     # 101 MiB = 0x06500000
    assert blob[52:60] == bytes.fromhex("01000000" "3412ed5e")
    assert parse_partition_device(blob) == {"offset": WINDOWS_OFFSET, "signature": SIGNATURE}
    decoded = decode_device(blob)
    assert (decoded["kind"], decoded["offset"], decoded["diskSignature"]) == ("mbr_partition", WINDOWS_OFFSET,
                                                                               SIGNATURE)


def test_mbr_partition_device_refuses_out_of_range_numbers():
    with pytest.raises(ValueError):
        encode_mbr_partition(-1, SIGNATURE)
    with pytest.raises(ValueError):
        encode_mbr_partition(0, 1 << 32)


@pytest.mark.parametrize("blob, kind", [
    (b"", "malformed"),
    (bytes(23), "malformed"),
    (bytes(16) + struct.pack("<IIII", 6, 0, 0x48, 0) + bytes(20), "malformed"),            # truncated partition
    (bytes(16) + struct.pack("<IIII", 6, 0, 0xFFFFFFFF, 0) + bytes(72), "malformed"),      # size beyond the blob
    (bytes(16) + struct.pack("<IIII", 6, 0, 0x48, 0) + bytes(20) + struct.pack("<I", 7) + bytes(32), "unknown"),
    (bytes(16) + struct.pack("<IIII", 0x99, 0, 0x48, 0) + bytes(72), "unknown"),
    (bytes(16) + struct.pack("<IIII", 5, 0, 0x10, 0), "boot"),
])
def test_decode_device_reports_what_it_cannot_parse(blob, kind):
    assert decode_device(blob)["kind"] == kind


def test_decode_device_names_a_ramdisk_and_its_options_object():
    options = uuid.UUID("7619dcc9-fafe-11d9-b411-000476eba25f")
    blob = options.bytes_le + struct.pack("<IIII", 0, 0, 0x48, 0) + struct.pack("<I", 3) + bytes(68)
    decoded = decode_device(blob)
    assert (decoded["kind"], decoded["localType"], decoded["options"]) == ("disk", "ramdisk", "{%s}" % options)


def test_decode_device_never_raises_on_random_bytes():
    rng = random.Random(14)
    for _ in range(2000):
        head = bytes(16) + struct.pack("<IIII", rng.choice([0, 2, 5, 6, 8, 0xFFFFFFFF]), rng.getrandbits(32),
                                       rng.choice([0, 0x48, rng.getrandbits(32)]), 0)
        blob = (head + rng.randbytes(rng.randrange(0, 200)))[: rng.randrange(0, 220)]
        assert decode_device(blob)["kind"]


# ---------------------------------------------------------------- the UEFI store, read by regipy

def test_uefi_store_description_marks_a_system_store(stores):
    d, _ = stores
    hive = RegistryHive(str(d / "BCD"))
    values = {v.name: v.value for v in hive.get_key("\\Description").iter_values()}
    assert (values["KeyName"], values["System"], values["TreatAsSystem"]) == ("BCD00000000", 1, 1)


def test_uefi_store_boot_manager_is_on_the_esp(stores):
    d, summary = stores
    hive = RegistryHive(str(d / "BCD"))
    assert object_type(hive, BOOTMGR) == 0x10100002
    assert parse_partition_device(element(hive, BOOTMGR, 0x11000001)) == {"partition": ESP, "disk": DISK}
    assert element(hive, BOOTMGR, 0x12000002) == "\\EFI\\Microsoft\\Boot\\bootmgfw.efi"
    assert element(hive, BOOTMGR, 0x12000004) == "Windows Boot Manager"
    assert element(hive, BOOTMGR, 0x12000005) == "en-US"
    assert element(hive, BOOTMGR, 0x14000006) == [GLOBALSETTINGS]
    assert element(hive, BOOTMGR, 0x23000003) == LOADER                   # default
    assert element(hive, BOOTMGR, 0x23000006) == summary.resume_guid
    assert element(hive, BOOTMGR, 0x24000001) == [LOADER]                 # displayorder
    assert element(hive, BOOTMGR, 0x24000010) == [MEMDIAG]                # toolsdisplayorder
    assert element(hive, BOOTMGR, 0x25000004) == struct.pack("<Q", 30)    # timeout


def test_uefi_store_loader_boots_windows_from_its_gpt_partition(stores):
    d, summary = stores
    hive = RegistryHive(str(d / "BCD"))
    assert object_type(hive, LOADER) == 0x10200003
    for device in (0x11000001, 0x21000001):                              # device, osdevice
        assert parse_partition_device(element(hive, LOADER, device)) == {"partition": WINDOWS, "disk": DISK}
    assert element(hive, LOADER, 0x12000002) == "\\Windows\\system32\\winload.efi"
    assert element(hive, LOADER, 0x12000004) == "Windows Server"
    assert element(hive, LOADER, 0x14000006) == [BOOTLOADERSETTINGS]
    assert element(hive, LOADER, 0x22000002) == "\\Windows"
    assert element(hive, LOADER, 0x23000003) == summary.resume_guid
    assert element(hive, LOADER, 0x25000020) == struct.pack("<Q", 0)      # nx OptIn
    assert element(hive, LOADER, 0x250000C2) == struct.pack("<Q", 1)      # bootmenupolicy Standard


def test_uefi_store_resume_and_memdiag(stores):
    d, summary = stores
    hive = RegistryHive(str(d / "BCD"))
    resume = summary.resume_guid
    assert object_type(hive, resume) == 0x10200004
    assert element(hive, resume, 0x12000002) == "\\Windows\\system32\\winresume.efi"
    assert element(hive, resume, 0x22000002) == "\\hiberfil.sys"
    assert element(hive, resume, 0x14000006) == [RESUMELOADERSETTINGS]
    for device in (0x11000001, 0x21000001):
        assert parse_partition_device(element(hive, resume, device)) == {"partition": WINDOWS, "disk": DISK}
    assert object_type(hive, MEMDIAG) == 0x10200005
    assert element(hive, MEMDIAG, 0x12000002) == "\\EFI\\Microsoft\\Boot\\memtest.efi"
    assert parse_partition_device(element(hive, MEMDIAG, 0x11000001)) == {"partition": ESP, "disk": DISK}


def test_uefi_store_keeps_the_template_settings_objects(stores):
    d, _ = stores
    hive = RegistryHive(str(d / "BCD"))
    objects = {k.name for k in hive.get_key("\\Objects").iter_subkeys()}
    assert {GLOBALSETTINGS, BOOTLOADERSETTINGS, RESUMELOADERSETTINGS} <= objects
    assert len(objects) == 11             # the template's 9 ({bootmgr}, {memdiag} among them) + loader, resume
    assert element(hive, BOOTLOADERSETTINGS, 0x14000006) == [GLOBALSETTINGS, "{7ff607e0-4395-11db-b0de-0800200c9a66}"]


def test_regipy_boot_entry_plugin_lists_the_gpt_entries(stores):
    from regipy.plugins.bcd.boot_entry_list import BootEntryListPlugin
    d, _ = stores
    plugin = BootEntryListPlugin(RegistryHive(str(d / "BCD")), as_json=True)
    plugin.run()
    found = {e["guid"]: (e["name"], e["gpt_partition"].upper(), e["gpt_disk"].upper()) for e in plugin.entries}
    assert found[BOOTMGR] == ("Windows Boot Manager", ESP, DISK)
    assert found[LOADER] == ("Windows Server", WINDOWS, DISK)


def test_bios_store_devices_are_mbr_partitions(stores):
    d, _ = stores
    hive = RegistryHive(str(d / "BIOS-BCD"))
    boot = {"offset": BOOT_OFFSET, "signature": SIGNATURE}
    windows = {"offset": WINDOWS_OFFSET, "signature": SIGNATURE}
    assert parse_partition_device(element(hive, BOOTMGR, 0x11000001)) == boot
    assert parse_partition_device(element(hive, LOADER, 0x11000001)) == windows
    assert parse_partition_device(element(hive, LOADER, 0x21000001)) == windows
    assert element(hive, LOADER, 0x12000002) == "\\Windows\\system32\\winload.exe"
    resume = element(hive, LOADER, 0x23000003)
    assert element(hive, resume, 0x12000002) == "\\Windows\\system32\\winresume.exe"
    assert element(hive, BOOTMGR, 0x23000003) == LOADER and element(hive, BOOTMGR, 0x24000001) == [LOADER]


# ---------------------------------------------------------------- read_boot_entries

def test_read_boot_entries_of_the_uefi_store(stores):
    d, summary = stores
    entries = read_boot_entries(d / "BCD")
    assert [(e.type_name, e.guid) for e in entries] == [
        ("bootmgr", BOOTMGR), ("osloader", LOADER),
        *sorted([("resume", summary.resume_guid), ("memdiag", MEMDIAG)], key=lambda x: x[1])]
    bootmgr, loader = entries[0], entries[1]
    assert bootmgr.device == decode_device(encode_gpt_partition(ESP, DISK))
    assert (loader.default, loader.display_index, loader.systemroot) == (True, 0, "\\Windows")
    assert loader.osdevice["partitionGuid"] == WINDOWS and loader.osdevice["diskGuid"] == DISK
    assert not any(e.default for e in entries if e is not loader)
    assert all(not e.problems for e in entries)


def test_read_boot_entries_of_the_bios_store(stores):
    d, _ = stores
    entries = {e.type_name: e for e in read_boot_entries(d / "BIOS-BCD")}
    assert entries["bootmgr"].device["kind"] == "mbr_partition" and entries["bootmgr"].device["offset"] == BOOT_OFFSET
    loader = entries["osloader"]
    assert (loader.guid, loader.default, loader.path) == (LOADER, True, "\\Windows\\system32\\winload.exe")
    assert (loader.osdevice["offset"], loader.osdevice["diskSignature"]) == (WINDOWS_OFFSET, SIGNATURE)


def test_read_boot_entries_reports_elements_of_the_wrong_type(tmp_path):
    from ce.registry import RegType
    rows = sample.bios_store_values(SIGNATURE, WINDOWS_OFFSET, BOOT_OFFSET, loader_guid=LOADER)
    rows.append((f"Objects\\{LOADER}\\Elements\\21000001", "Element", RegType.SZ, "not a device"))
    make_hive(tmp_path / "BCD", sample.ROOT_NAME, rows)
    loader = next(e for e in read_boot_entries(tmp_path / "BCD") if e.guid == LOADER)
    assert loader.osdevice is None and loader.problems[0] == "element 21000001 is REG_SZ, not REG_BINARY"


# ---------------------------------------------------------------- refusals and replacement

@pytest.mark.parametrize("damage", ["missing", "dirty", "corrupt", "not_bcd"])
def test_unusable_template_is_refused_and_nothing_written(tmp_path, damage):
    template, out = tmp_path / "BCD-Template", tmp_path / "BCD"
    data = make_hive(template, sample.ROOT_NAME, sample.template_values() if damage != "not_bcd" else
                     [("Objects\\" + BOOTMGR + "\\Description", "Type", 4, 0x10100002)])
    if damage == "missing":
        template.unlink()
    elif damage in ("dirty", "corrupt"):
        template.write_bytes(make_dirty(data) if damage == "dirty" else corrupt_hive(data))
    with pytest.raises(BcdTemplateUnusable) as refused:
        build_uefi_store(template, out, esp_partition_guid=ESP, windows_partition_guid=WINDOWS, disk_guid=DISK)
    assert refused.value.code == "bcd_template_unusable"
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if damage == "missing" else ["BCD-Template"])


def test_loaders_already_in_the_template_are_replaced(tmp_path):
    """An old BIOS store used as the template: its MBR-device loader and resume objects go, ours come."""
    make_hive(tmp_path / "old", sample.ROOT_NAME,
              sample.bios_store_values(SIGNATURE, WINDOWS_OFFSET, BOOT_OFFSET, loader_guid=LOADER))
    new_loader = "{11111111-2222-4333-8444-555555555555}"
    summary = build_uefi_store(tmp_path / "old", tmp_path / "BCD", esp_partition_guid=ESP,
                               windows_partition_guid=WINDOWS, disk_guid=DISK, loader_guid=new_loader)
    assert LOADER in summary.removed_objects and len(summary.removed_objects) == 2
    kinds = {e.guid: e.device["kind"] for e in read_boot_entries(tmp_path / "BCD")}
    assert LOADER not in kinds and set(kinds.values()) == {"gpt_partition"}
