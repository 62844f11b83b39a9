"""ce inspect against every sample image: each reported field equals the spec's truth; bad inputs fail clearly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from regipy.registry import RegistryHive

from ce import registry
from ce.errors import CeError
from images.spec import load_all
from ce.windows.detection import detection_rules, inspect_guest, lsa_string, parse_ddcs, product_family, vda_release
from ce.registry import sha256_file

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
    for key, expected in truth.items():
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
    assert report["partition_table"] == truth["partition_table"]
    assert report["disk"]["partition_table"] == truth["partition_table"]
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
    assert report["state"] == {"hibernated": False, "unclean": False, "bitlocker": False, "dirty_hives": []}
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
    assert report["disk"]["virtual_size"] == 128 << 20
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
    assert cv.get_value("ProductName") == report["os"]["product_name"]
    assert cv.get_value("UBR") == report["os"]["ubr"]
    current = RegistryHive(str(system)).get_key(r"\Select").get_value("Current")
    assert f"ControlSet{current:03d}" == report["os"]["current_control_set"] == "ControlSet002"
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
    with pytest.raises(CeError, match="not a Windows root") as err:
        inspect_guest(appliance.guest, appliance.infos["bad-two-roots"], root=f"{device}1", device=device)
    assert err.value.code == "not_windows"
