"""ce inspect against every sample image: each reported field equals the spec's truth; bad inputs fail clearly."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic.alias_generators import to_camel
from regipy.registry import RegistryHive

from ce import registry
from ce.errors import CeError
from images.spec import load_all
from ce.windows.detection import detection_rules, inspect_guest, lsa_string, parse_ddcs, product_family, vda_release
from ce.registry import RegType, sha256_file
from ce.guest import ESP_GUID, Filesystem
from ce.windows.bcd import build_uefi_store, decode_device, encode_gpt_partition, encode_mbr_partition
from ce.windows.bcd import elements as bcd_elements
from ce.windows.boot import ThisDisk, read_boot, read_entries, resolve_device
from ce.windows.facts import BootFacts, BootStore, describe_boot
from images import bcd as sample_bcd
from images.build import loader_description, make_hive

SPECS = load_all()
GOOD = [n for n, s in SPECS.items() if not n.startswith("bad-")]
FAILING = [n for n, s in SPECS.items() if "error" in s.truth]
WARNED = [n for n, s in SPECS.items() if "warnings" in s.truth]
REFUSE_WRITES = [n for n, s in SPECS.items() if "write_error" in s.truth]
CE = [sys.executable, "-m", "ce.cli"]

_reports: dict = {}


def inspect_sample(appliance, name: str):
    """Inspect one attached drive once per session; returns the report or the CeError it raised."""
    if name not in _reports:
        if name in appliance.open_errors:
            _reports[name] = appliance.open_errors[name]
        else:
            try:
                _reports[name] = inspect_guest(appliance.guest, appliance.infos[name],
                                               device=appliance.device[name])
            except CeError as exc:
                _reports[name] = exc
    return _reports[name]


def report_of(appliance, name):
    result = inspect_sample(appliance, name)
    if isinstance(result, CeError):
        pytest.fail(f"{name}: inspect failed: [{result.code}] {result.message}")
    return result.model_dump()


def assert_matches(actual: dict, truth: dict, where: str) -> None:
    """The report's camelCase keys against the sample's truth (snake_case, as images/spec.py writes it)."""
    for name, expected in truth.items():
        key = to_camel(name)
        assert key in actual, f"{where}.{key} missing from the report"
        if isinstance(expected, dict):
            assert_matches(actual[key], expected, f"{where}.{key}")
        else:
            assert actual[key] == expected, f"{where}.{key}: reported {actual[key]!r}, truth {expected!r}"


@pytest.mark.slow
@pytest.mark.parametrize("name", GOOD)
def test_inspect_matches_truth(appliance, name):
    truth = SPECS[name].truth
    report = report_of(appliance, name)
    assert report["firmware"] == truth["firmware"]
    assert report["partitionTable"] == truth["partition_table"]
    assert report["disk"]["partitionTable"] == truth["partition_table"]
    assert_matches(report["os"], truth["os"], "os")
    assert_matches(report["domain"], truth["domain"], "domain")
    assert_matches(report["vda"], truth["vda"], "vda")
    components = {k: v is not None for k, v in report["components"].items()}
    for key, expected in truth["components"].items():
        if key.endswith("_version"):
            assert report["components"][key.removesuffix("_version")]["version"] == expected
        else:
            assert components[key] == expected, f"components.{key}"
    assert sorted(t["name"] for t in report["tools"]) == sorted(truth["tools"])
    assert report["state"] == {"hibernated": False, "unclean": False, "bitlocker": False, "dirtyHives": []}
    assert report["warnings"] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", FAILING)
def test_bad_input_gives_its_own_error(appliance, name):
    result = inspect_sample(appliance, name)
    assert isinstance(result, CeError), f"{name} was inspected without error"
    assert result.code == SPECS[name].truth["error"]
    assert result.message and "Traceback" not in result.message and "\n" not in result.message


def test_bad_inputs_have_distinct_codes():
    codes = [SPECS[n].truth["error"] for n in FAILING]
    assert len(codes) == len(set(codes)) >= 6


@pytest.mark.slow
@pytest.mark.parametrize("name", WARNED)
def test_flawed_but_readable_input_is_inspected_with_a_warning(appliance, name):
    truth = SPECS[name].truth
    report = report_of(appliance, name)
    assert [w["code"] for w in report["warnings"]] == truth["warnings"]
    assert_matches(report["os"], truth["os"], "os")


@pytest.mark.slow
@pytest.mark.parametrize("name", REFUSE_WRITES)
def test_flawed_volume_refuses_a_write_mount(appliance, name):
    guest = appliance.guest
    root = guest.windows_root(device=appliance.device[name])
    with pytest.raises(CeError) as err:
        guest.mount_windows(root, readonly=False)
    guest.unmount_all()
    assert err.value.code == SPECS[name].truth["write_error"]
    assert "shut down" in err.value.message


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["win2016-as-raw", "win2016-as-vpc-fixed", "win2016-as-vpc-dynamic",
                                     "win2016-as-vmdk-monolithicSparse", "win2016-as-vhdx"])
def test_every_disk_format_inspects_the_same(appliance, variant):
    expected_format = variant.split("-as-")[1].split("-")[0].replace("vpc", "vhd")
    report = report_of(appliance, variant)
    assert report["disk"]["format"] == expected_format
    assert report["disk"]["virtualSize"] == 128 << 20
    assert_matches(report["os"], SPECS["win2016-vda1912"].truth["os"], "os")
    assert report["vda"]["version"] == SPECS["win2016-vda1912"].truth["vda"]["version"]


@pytest.mark.slow
def test_hives_read_the_same_with_regipy(appliance, tmp_path):
    """An independent parser agrees with what inspect read through hivex."""
    name = "win2019-vda2203-pvs"
    guest = appliance.guest
    root = guest.windows_root(device=appliance.device[name])
    guest.mount_windows(root)
    try:
        software = registry.download_hive(guest, guest.win_path("/windows/system32/CONFIG/software"), tmp_path)
        system = registry.download_hive(guest, guest.win_path("/Windows/System32/config/SYSTEM"), tmp_path)
    finally:
        guest.unmount_all()
    report = report_of(appliance, name)
    cv = RegistryHive(str(software)).get_key(r"\Microsoft\Windows NT\CurrentVersion")
    assert cv.get_value("ProductName") == report["os"]["productName"]
    assert cv.get_value("UBR") == report["os"]["ubr"]
    current = RegistryHive(str(system)).get_key(r"\Select").get_value("Current")
    assert f"ControlSet{current:03d}" == report["os"]["currentControlSet"] == "ControlSet002"
    tcpip = RegistryHive(str(system)).get_key(rf"\ControlSet{current:03d}\Services\Tcpip\Parameters")
    assert tcpip.get_value("Hostname") == report["os"]["hostname"]


# ---------------------------------------------------------------- the command, end to end

@pytest.mark.slow
def test_cli_inspect_json_end_to_end_leaves_the_disk_unchanged(samples):
    path = samples["win2022-vda2411-mcs"].path
    before = sha256_file(path)
    proc = subprocess.run([*CE, "inspect", "--machine-readable", "--json", str(path)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    truth = SPECS["win2022-vda2411-mcs"].truth
    assert_matches(report["os"], truth["os"], "os")
    assert report["vda"]["controllers"] == truth["vda"]["controllers"]
    assert sha256_file(path) == before
    # progress off a terminal (issue 17): one "[elapsed] phase" line per phase, and the same as JSON lines
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    phases = [line.split("] ", 1)[1] for line in proc.stderr.splitlines() if line.startswith("[")]
    assert [e["message"] for e in events][:3] == phases[:3] == ["reading the disk's format", "starting the appliance",
                                                                "reading the partitions and filesystems"]
    assert "reading the registry hives" in phases and phases[-1] == "done"
    percents = [e["percent"] for e in events]
    assert percents == sorted(percents) and percents[-1] == 100 and len(set(percents)) >= 4
    assert all(a["elapsed"] <= b["elapsed"] for a, b in zip(events, events[1:]))


@pytest.mark.slow
def test_cli_inspect_table(samples):
    path = samples["win2016-vda1912"].path
    proc = subprocess.run([*CE, "inspect", str(path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "Windows Server 2016" in proc.stdout and "CTX-SRV16-GOLD" in proc.stdout
    assert "1912.0.9000.11 (release 1912, LTSR)" in proc.stdout
    assert "vmware 11.3.5.18557794" in proc.stdout
    rows = proc.stdout.splitlines()
    assert any(r.startswith("System partition") and r.endswith("/dev/sda1 ntfs 'System Reserved', 32 MiB")
               for r in rows), proc.stdout
    assert any(r.startswith("BCD") and r.endswith("/dev/sda1:/Boot/BCD, 4 boot entries (* the default)") for r in rows)
    assert any(r.startswith("Boot entry") and "* osloader 'Windows Server', \\Windows\\system32\\winload.exe, "
               "device /dev/sda2 (MBR partition at offset 34603008 of disk 0x" in r for r in rows), proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"), reason="needs root for a loop device")
def test_cli_inspects_a_block_device(extra_formats):
    image = extra_formats["win2016-as-raw"]
    before = sha256_file(image)
    loop = subprocess.run(["losetup", "--read-only", "--find", "--show", image], capture_output=True, text=True)
    if loop.returncode != 0:
        pytest.skip(f"no loop device here: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    try:
        proc = subprocess.run([*CE, "inspect", "--json", device], capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["disk"]["path"] == device and report["disk"]["format"] == "raw"
    assert report["os"]["hostname"] == SPECS["win2016-vda1912"].truth["os"]["hostname"]
    assert sha256_file(image) == before


@pytest.mark.parametrize("make, code", [
    (lambda p: None, "disk_not_found"),
    (lambda p: p.write_bytes(b""), "disk_empty"),
])
def test_cli_rejects_missing_and_empty_files_without_traceback(tmp_path, make, code):
    path = tmp_path / "disk.vhdx"
    make(path)
    proc = subprocess.run([*CE, "inspect", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"error [{code}]" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*CE, "inspect", "--json", str(path)], capture_output=True, text=True, timeout=120)
    assert json.loads(proc.stdout)["error"]["code"] == code


def test_cli_truncated_image_fails_before_launching(samples):
    path = samples["bad-truncated"].path
    before = sha256_file(path)
    proc = subprocess.run([*CE, "inspect", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "error [disk_unreadable]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sha256_file(path) == before


# ---------------------------------------------------------------- pure functions

def test_parse_ddcs_handles_groups_commas_and_blanks():
    assert parse_ddcs("(a.x b.x) (c.x)") == ["a.x", "b.x", "c.x"]
    assert parse_ddcs(" a.x,b.x  c.x ") == ["a.x", "b.x", "c.x"]
    assert parse_ddcs("") == [] and parse_ddcs(None) == []


def test_vda_release():
    assert vda_release("1912.0.9000.11") == "1912"
    assert vda_release("7.15.8000.7") == "7.15"
    assert vda_release("") == ""


def test_product_family_uses_the_build():
    rules = detection_rules()
    assert product_family("Windows 10 Enterprise", "Client", 22631, rules) == "Windows 11"
    assert product_family("Windows 10 Enterprise", "Client", 19045, rules) == "Windows 10"
    assert product_family("Windows Server 2019 Standard", "Server", 17763, rules) == "Windows Server 2019"
    assert product_family("Windows Server 2022 Datacenter", "Server Core", 20348, rules) == "Windows Server 2022"
    assert product_family("Windows Server 2012 R2 Standard", "Server", 9600, rules) == "Windows Server 2012 R2"


def test_lsa_string_decodes_both_layouts():
    import struct
    text = "CORP".encode("utf-16-le")
    assert lsa_string(struct.pack("<HHIQ", 8, 8, 0, 16) + text) == "CORP"
    assert lsa_string(struct.pack("<HHI", 8, 8, 8) + text) == "CORP"
    assert lsa_string(b"") == "" and lsa_string(b"\x01") == ""


@pytest.mark.slow
def test_root_option_picks_one_of_two_windows_installations(appliance):
    device = appliance.device["bad-two-roots"]
    report = inspect_guest(appliance.guest, appliance.infos["bad-two-roots"], root=f"{device}4", device=device)
    assert report.os.root_device == f"{device}4"
    assert report.os.hostname == "DUAL-B"
    # the ESP's BCD was written for the first installation: its default entry does not start this one
    assert [w.code for w in report.warnings] == ["boot_config_mismatch"]
    assert f"does not start the Windows on {device}4" in report.warnings[0].message
    assert f"its device is {device}3 (GPT partition" in report.warnings[0].message
    assert next(e for e in report.boot.entries if e.default).osdevice.partition == f"{device}3"
    with pytest.raises(CeError, match="not a Windows root") as err:
        inspect_guest(appliance.guest, appliance.infos["bad-two-roots"], root=f"{device}1", device=device)
    assert err.value.code == "not_windows"


# ---------------------------------------------------------------- the boot configuration

BOOT_ENTRY_TYPES = ["bootmgr", "osloader", "memdiag", "resume"]


@pytest.mark.slow
@pytest.mark.parametrize("name", GOOD)
def test_inspect_reports_the_boot_partition_and_the_bcd_entries(appliance, name):
    """UEFI samples boot from the ESP (partition 1, FAT, its BCD under EFI\\Microsoft\\Boot), BIOS samples from
    the active partition 1 (System Reserved, or Windows itself); every device in the store is a partition of this
    disk and the default loader's are the Windows partition inspect found."""
    spec, report = SPECS[name], report_of(appliance, name)
    device, boot, root = appliance.device[name], report["boot"], report["os"]["rootDevice"]
    home = f"{device}1"
    if spec.firmware == "uefi":
        assert boot["esp"] == {"device": home, "size": 32 << 20, "filesystem": "vfat", "label": "SYSTEM"}
        assert boot["systemPartition"] is None
        assert boot["store"] == {"device": home, "path": "/EFI/Microsoft/Boot/BCD"}
        loader, resume = r"\Windows\system32\winload.efi", r"\Windows\system32\winresume.efi"
    else:
        assert boot["esp"] is None
        assert boot["systemPartition"]["device"] == home
        assert boot["systemPartition"]["label"] == ("System Reserved" if spec.system_reserved_mib else "")
        assert boot["store"] == {"device": home, "path": "/Boot/BCD"}
        loader, resume = r"\Windows\system32\winload.exe", r"\Windows\system32\winresume.exe"
    entries = {e["type"]: e for e in boot["entries"]}
    assert [e["type"] for e in boot["entries"]][:2] == ["bootmgr", "osloader"]
    assert sorted(entries) == sorted(BOOT_ENTRY_TYPES) and len(boot["entries"]) == 4
    default = entries["osloader"]
    assert (default["default"], default["displayIndex"]) == (True, 0)
    assert boot["default"] == default["guid"] and boot["displayOrder"] == [default["guid"]]
    assert (default["description"], default["path"], default["systemroot"]) == (
        loader_description(spec.windows), loader, "\\Windows")
    assert default["device"]["partition"] == default["osdevice"]["partition"] == root
    assert entries["bootmgr"]["device"]["partition"] == entries["memdiag"]["device"]["partition"] == home
    assert (entries["resume"]["path"], entries["resume"]["osdevice"]["partition"]) == (resume, root)
    kind = "gpt_partition" if spec.partition_table == "gpt" else "mbr_partition"
    assert all(e["device"]["decoded"]["kind"] == kind and e["device"]["onThisDisk"] for e in boot["entries"])
    assert all(not e["problems"] for e in boot["entries"])
    rows = "\n".join(inspect_sample(appliance, name).describe())
    assert f"* osloader '{default['description']}', {loader}, device {root} (" in rows


def test_describe_lists_the_boot_rows_and_a_missing_store():
    assert describe_boot(BootFacts()) == [("BCD", "none found")]


GPT_DISK, OTHER_DISK = "7E4CA84B-A210-5C73-88A3-4A2943D3F02C", "2AF335EE-E9B5-5E0A-8F6A-B58D206317FC"
ESP_PART, WIN_PART = "8B8EC44B-B939-55A5-B722-7E5A26D2573A", "3192EA9E-91CA-541D-9251-FB6D7777949B"
SIGNATURE = 0x0BD133F8
MIB = 1 << 20
GPT_TABLE = ThisDisk(table="gpt", disk_id=GPT_DISK, partitions=(
    Filesystem("/dev/sda1", "vfat", offset=1 * MIB, partition_guid=ESP_PART, partition_type=ESP_GUID),
    Filesystem("/dev/sda2", "unknown", offset=33 * MIB, partition_guid="C88424E9-8635-527C-83BE-360F0925B5AD"),
    Filesystem("/dev/sda3", "ntfs", offset=49 * MIB, partition_guid=WIN_PART)))
MBR_TABLE = ThisDisk(table="mbr", disk_id=f"{SIGNATURE:08x}", partitions=(
    Filesystem("/dev/sdb1", "ntfs", offset=1 * MIB, active=True),
    Filesystem("/dev/sdb2", "ntfs", offset=101 * MIB, active=False)))


def resolved(blob: bytes, disk: ThisDisk, boot_device: str | None = None) -> tuple:
    device = resolve_device(decode_device(blob), disk, boot_device)
    return device.partition, device.on_this_disk, device.describe()


def test_a_gpt_device_resolves_to_the_partition_with_its_guid_on_a_disk_with_its_guid():
    assert resolved(encode_gpt_partition(WIN_PART, GPT_DISK), GPT_TABLE) == (
        "/dev/sda3", True, f"/dev/sda3 (GPT partition {{{WIN_PART}}} of disk {{{GPT_DISK}}})")
    assert resolved(encode_gpt_partition(ESP_PART.lower(), GPT_DISK.lower()), GPT_TABLE)[0] == "/dev/sda1"
    assert resolved(encode_gpt_partition(WIN_PART, OTHER_DISK), GPT_TABLE) == (
        None, False, f"GPT partition {{{WIN_PART}}} of disk {{{OTHER_DISK}}} (not on this disk)")
    lost = "11111111-2222-3333-4444-555555555555"
    assert resolved(encode_gpt_partition(lost, GPT_DISK), GPT_TABLE) == (
        None, True, f"GPT partition {{{lost.upper()}}} of disk {{{GPT_DISK}}} (no such partition on this disk)")
    # the same GUIDs mean nothing on an MBR disk
    assert resolved(encode_gpt_partition(WIN_PART, GPT_DISK), MBR_TABLE)[:2] == (None, False)


def test_an_mbr_device_resolves_to_the_partition_at_its_offset_on_a_disk_with_its_signature():
    assert resolved(encode_mbr_partition(101 * MIB, SIGNATURE), MBR_TABLE) == (
        "/dev/sdb2", True, "/dev/sdb2 (MBR partition at offset 105906176 of disk 0x0BD133F8)")
    assert resolved(encode_mbr_partition(1 * MIB, SIGNATURE), MBR_TABLE)[0] == "/dev/sdb1"
    assert resolved(encode_mbr_partition(2 * MIB, SIGNATURE), MBR_TABLE) == (
        None, True, "MBR partition at offset 2097152 of disk 0x0BD133F8 (no such partition on this disk)")
    assert resolved(encode_mbr_partition(101 * MIB, SIGNATURE + 1), MBR_TABLE) == (
        None, False, "MBR partition at offset 105906176 of disk 0x0BD133F9 (not on this disk)")
    assert resolved(encode_mbr_partition(49 * MIB, SIGNATURE), GPT_TABLE)[:2] == (None, False)


def test_the_boot_device_is_the_partition_the_store_was_read_from_and_bad_blobs_resolve_to_nothing():
    boot = bytes(16) + bytes.fromhex("05000000 00000000 10000000 00000000")       # device type 5: "boot"
    assert resolved(boot, MBR_TABLE, "/dev/sdb1")[:2] == ("/dev/sdb1", True)
    assert resolved(b"\x01\x02", GPT_TABLE) == (None, None, "an undecodable device (2 bytes, shorter than a "
                                                                "device header (32))")
    truncated = encode_gpt_partition(WIN_PART, GPT_DISK)[:60]
    assert resolved(truncated, GPT_TABLE)[:2] == (None, None)
    assert resolved(truncated, GPT_TABLE)[2] == ("an undecodable device (a partition device of 60 bytes (descriptor "
                                                 "size 72); 88 expected)")


def test_a_disk_without_a_boot_partition_is_warned_before_anything_is_read():
    no_esp = ThisDisk(table="gpt", disk_id=GPT_DISK, partitions=GPT_TABLE.partitions[1:])
    no_active = ThisDisk(table="mbr", disk_id=MBR_TABLE.disk_id, partitions=(
        Filesystem("/dev/sdb1", "ntfs", offset=MIB, active=False),))
    for disk, firmware, says in ((no_esp, "unknown", "/dev/sda has no EFI system partition"),
                                 (no_active, "bios", "/dev/sda has no active partition")):
        facts, warnings = read_boot(None, "/dev/sda", disk, firmware, "/dev/sda3", Path("/nonexistent"))
        assert (facts.esp, facts.system_partition, facts.store, facts.entries) == (None, None, None, [])
        assert [(w.code, w.message.split(":")[0]) for w in warnings] == [("boot_config_missing", says)]


# ---- a store read from a local copy: the entries, and every way it fails to boot Windows is a warning

def bios_store(path, windows_offset=101 * MIB, signature=SIGNATURE):
    rows = sample_bcd.bios_store_values(signature, windows_offset, 1 * MIB, loader_guid=LOADER)
    make_hive(path, sample_bcd.ROOT_NAME, rows)
    return path


def uefi_store(tmp_path, disk_guid=GPT_DISK):
    template = tmp_path / "BCD-Template"
    make_hive(template, sample_bcd.ROOT_NAME, sample_bcd.template_values())
    build_uefi_store(template, tmp_path / "BCD", esp_partition_guid=ESP_PART, windows_partition_guid=WIN_PART,
                     disk_guid=disk_guid, loader_guid=LOADER, description="Windows Server")
    return tmp_path / "BCD"


LOADER = "{2a09c531-8e95-5a48-9108-758b176ed4bb}"


def entries_of(local, disk, firmware, windows_device, home):
    facts = BootFacts(store=BootStore(device=home, path="/Boot/BCD"))
    warnings = read_entries(facts, local, disk, firmware, windows_device)
    return facts, [(w.code, w.message) for w in warnings]


def test_a_bios_store_that_boots_this_windows_has_no_warning(tmp_path):
    facts, warnings = entries_of(bios_store(tmp_path / "BCD"), MBR_TABLE, "bios", "/dev/sdb2", "/dev/sdb1")
    assert warnings == []
    assert [e.type for e in facts.entries] == ["bootmgr", "osloader", "memdiag", "resume"]
    loader = facts.entries[1]
    assert facts.default == loader.guid == LOADER and facts.display_order == [LOADER]
    assert (loader.device.partition, loader.osdevice.partition, loader.systemroot) == ("/dev/sdb2", "/dev/sdb2",
                                                                                       "\\Windows")
    assert facts.entries[0].device.partition == "/dev/sdb1"


def test_a_default_entry_on_another_partition_or_disk_is_a_mismatch(tmp_path):
    _, warnings = entries_of(bios_store(tmp_path / "BCD"), MBR_TABLE, "bios", "/dev/sdb1", "/dev/sdb1")
    assert [c for c, _ in warnings] == ["boot_config_mismatch"]
    assert "does not start the Windows on /dev/sdb1: its device is /dev/sdb2 (MBR partition" in warnings[0][1]
    _, warnings = entries_of(bios_store(tmp_path / "other", signature=0x12345678), MBR_TABLE, "bios", "/dev/sdb2",
                             "/dev/sdb1")
    assert [c for c, _ in warnings] == ["boot_config_mismatch"]
    assert "of disk 0x12345678 (not on this disk); its osdevice is" in warnings[0][1]
    _, warnings = entries_of(uefi_store(tmp_path, OTHER_DISK), GPT_TABLE, "uefi", "/dev/sda3", "/dev/sda1")
    assert [c for c, _ in warnings] == ["boot_config_mismatch"]
    assert f"of disk {{{OTHER_DISK}}} (not on this disk)" in warnings[0][1]


def test_a_loader_for_the_other_firmware_is_a_mismatch(tmp_path):
    facts, warnings = entries_of(uefi_store(tmp_path), GPT_TABLE, "uefi", "/dev/sda3", "/dev/sda1")
    assert warnings == [] and facts.entries[1].path == "\\Windows\\system32\\winload.efi"
    _, warnings = entries_of(uefi_store(tmp_path), GPT_TABLE, "bios", "/dev/sda3", "/dev/sda1")
    assert warnings == [("boot_config_mismatch", "/dev/sda1:/Boot/BCD: the default boot entry " + LOADER +
                         " 'Windows Server' loads \\Windows\\system32\\winload.efi (a UEFI loader), but the disk "
                         "boots by BIOS (MBR, no EFI system partition)")]
    _, warnings = entries_of(bios_store(tmp_path / "BCD.bios"), MBR_TABLE, "uefi", "/dev/sdb2", "/dev/sdb1")
    assert [c for c, _ in warnings] == ["boot_config_mismatch"] and "winload.exe (a BIOS loader)" in warnings[0][1]


def test_an_empty_store_has_no_boot_entries_and_a_warning(tmp_path):
    facts, warnings = entries_of(make_hive(tmp_path / "BCD", sample_bcd.ROOT_NAME, []) and tmp_path / "BCD",
                                 MBR_TABLE, "bios", "/dev/sdb2", "/dev/sdb1")
    assert facts.entries == [] and facts.default is None
    assert [c for c, _ in warnings] == ["boot_config_missing"] and "has no boot entries" in warnings[0][1]
    rows = dict(describe_boot(facts))
    assert rows["BCD"] == "/dev/sdb1:/Boot/BCD, no boot entries"
    # objects, but none an application: the settings of a template
    facts, warnings = entries_of(make_hive(tmp_path / "T", sample_bcd.ROOT_NAME, [
        r for r in sample_bcd.template_values() if "Objects\\" + bcd_elements.BOOTMGR not in r[0]
        and "Objects\\" + bcd_elements.MEMDIAG not in r[0]]) and tmp_path / "T", MBR_TABLE, "bios", "/dev/sdb2",
        "/dev/sdb1")
    assert facts.entries == [] and [c for c, _ in warnings] == ["boot_config_missing"]


def test_a_store_without_a_default_is_missing_one(tmp_path):
    rows = [r for r in sample_bcd.bios_store_values(SIGNATURE, 101 * MIB, MIB, loader_guid=LOADER)
            if not r[0].endswith(f"{bcd_elements.DEFAULT_OBJECT:08X}")]
    facts, warnings = entries_of(make_hive(tmp_path / "BCD", sample_bcd.ROOT_NAME, rows) and tmp_path / "BCD",
                                 MBR_TABLE, "bios", "/dev/sdb2", "/dev/sdb1")
    assert len(facts.entries) == 4 and facts.default is None
    assert warnings == [("boot_config_missing", "the BCD store /dev/sdb1:/Boot/BCD names no default boot entry it "
                                                "holds")]


@pytest.mark.parametrize("damage, says", [("garbage", "is not a registry hive"), ("truncated", "is truncated"),
                                          ("zeroed bins", "has no hive bin"), ("junk cells", "hivex cannot open it")])
def test_a_damaged_store_is_a_warning_not_an_error(tmp_path, damage, says):
    data = bios_store(tmp_path / "BCD").read_bytes()
    data = {"garbage": b"not a hive" * 1000, "truncated": data[:4096 + 100],
            "zeroed bins": data[:4096] + bytes(len(data) - 4096),
            "junk cells": data[:0x1020] + b"\x5a\xa5" * 0x800 + data[0x2020:]}[damage]
    (tmp_path / "BCD").write_bytes(data)
    facts, warnings = entries_of(tmp_path / "BCD", MBR_TABLE, "bios", "/dev/sdb2", "/dev/sdb1")
    assert facts.entries == []
    assert [c for c, _ in warnings] == ["boot_config_unreadable"]
    assert warnings[0][1].startswith("the BCD store /dev/sdb1:/Boot/BCD") and says in warnings[0][1]
    assert str(tmp_path) not in warnings[0][1]


def test_an_element_of_the_wrong_type_is_reported_and_warned(tmp_path):
    rows = sample_bcd.bios_store_values(SIGNATURE, 101 * MIB, MIB, loader_guid=LOADER)
    rows = [(k, n, RegType.SZ, "C:") if k == bcd_elements.element_key(LOADER, bcd_elements.OS_DEVICE) else
            (k, n, t, d) for k, n, t, d in rows]
    facts, warnings = entries_of(make_hive(tmp_path / "BCD", sample_bcd.ROOT_NAME, rows) and tmp_path / "BCD",
                                 MBR_TABLE, "bios", "/dev/sdb2", "/dev/sdb1")
    loader = facts.entries[1]
    assert loader.osdevice is None and len(loader.problems) == 1
    assert loader.problems[0] == "element 21000001 is REG_SZ, not REG_BINARY"
    assert [c for c, _ in warnings] == ["boot_config_unreadable", "boot_config_mismatch"]
    assert "its osdevice is not set" in warnings[1][1]


def test_no_damage_to_a_store_escapes_as_an_exception(tmp_path):
    """200 stores with a few random bytes changed past the header (seeded): each reads as entries, or warns."""
    data = bios_store(tmp_path / "good").read_bytes()
    rng, outcomes = random.Random(14), set()
    for _ in range(200):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            at, length = rng.randrange(4096, len(data) - 16), rng.choice([1, 4, 16])
            damaged[at:at + length] = rng.randbytes(length)
        (tmp_path / "BCD").write_bytes(bytes(damaged))
        facts, warnings = entries_of(tmp_path / "BCD", MBR_TABLE, "bios", "/dev/sdb2", "/dev/sdb1")
        assert facts.entries or warnings
        outcomes.add(warnings[0][0] if warnings else "read")
    assert {"read", "boot_config_unreadable"} <= outcomes
