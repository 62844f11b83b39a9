"""prepare options that act at first boot (xdReconfigure /reconfigure switches, installMisa / installMcsio /
installPvs, domainUnjoin), the first-boot mechanism and the payload store.

No Windows can boot here, so the first-boot scripts are checked structurally (static, staged byte-identical,
values only in JSON data, retry caps, disarm) and every job value that could reach them is tried with injection
strings. The offline half is checked by reading the image back: files by sha256 and content, registry values
with hivex and with regipy.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from regipy.exceptions import RegistryKeyNotFoundException
from regipy.registry import RegistryHive

from ce import disks, firstboot, hashing, ntfs, registry
from ce.guest import Drive, Guest
from ce.errors import InvalidFirstBootAction, InvalidParams, PayloadMismatch, PayloadMissing, PayloadStoreInvalid
from ce.payloads import PayloadStore, write_manifest
from ce.plan import hive_path
from ce.registry import Hive, RegType, sha256_file
from ce.windows import inspect_guest
from steps.prepare import Params, validate
from steps.prepare.vda import XdParameter, validated
from tests.support.planning import plan_prepare_on

CE = [sys.executable, "-m", "ce.cli"]
INJECTIONS = ["8080 & calc.exe", "a.example.com|whoami", 'a"b', "'a'", "%COMSPEC%", "$(reboot)", "a\nshutdown",
              "a;rm", "`id`", "a\r\nb", "${env:x}", "a>b", "^a"]
SCRIPTS = sorted(p.name for p in resources.files("ce").joinpath("data/firstboot").iterdir() if p.name.endswith(".ps1"))
FB = r"C:\Windows\Setup\ce-firstboot"


def xd(**values):
    return [XdParameter(ParameterName=k, ParameterValue=v) for k, v in values.items()]


# ---------------------------------------------------------------- validation: nothing hostile is staged

@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("option", ["portnumber", "enable_hdx_ports", "wem_server", "wem_cloud_connectors",
                                    "controllers"])
def test_injection_strings_in_reconfigure_options_are_refused(option, value):
    with pytest.raises(InvalidParams):
        validated(xd(**{option: value}))


@pytest.mark.parametrize("value", INJECTIONS + ["2402 LTSR CU2 & x", "../../x"])
def test_injection_strings_in_install_pvs_are_refused(value):
    with pytest.raises(InvalidParams, match="not a supported Citrix Provisioning version"):
        validate(Params(disk="x", provisioningType="Pvs", installPvs=value))


@pytest.mark.parametrize("value", INJECTIONS)
def test_the_staging_fence_refuses_what_validation_might_let_through(value):
    with pytest.raises(InvalidFirstBootAction):
        firstboot.make_action("vda-reconfigure", "vda-reconfigure.ps1", {"arguments": ["/portnumber", value]},
                              retries=2, required=False, timeout=60, reason="")


def test_reconfigure_options_become_separate_arguments():
    controllers, site, argv = validated(xd(controllers="a.example.com", portnumber=" 08080 ", enable_hdx_ports="",
                                           enable_hdx_udp_ports="false", wem_cloud_connectors="c1.x.org,c2.x.org"))
    assert controllers == ["a.example.com"] and site is None
    assert argv == ["/enable_hdx_ports", "/portnumber", "8080", "/wem_cloud_connectors", "c1.x.org,c2.x.org"]
    for bad in ("0", "65536", "80.5", "-1"):
        with pytest.raises(InvalidParams, match="not a TCP port"):
            validated(xd(portnumber=bad))
    with pytest.raises(InvalidParams, match="one FQDN"):
        validated(xd(wem_server="a.x.org b.x.org"))
    with pytest.raises(InvalidParams, match="not supported"):
        validated(xd(wem_anything="1"))


def test_component_options_need_the_right_provisioning_type():
    with pytest.raises(InvalidParams, match="installMisa needs provisioningType Mcs"):
        validate(Params(disk="x", provisioningType="Pvs", installMisa=True))
    with pytest.raises(InvalidParams, match="installMcsio needs provisioningType Mcs"):
        validate(Params(disk="x", provisioningType="Pvs", installMcsio=True))
    with pytest.raises(InvalidParams, match="installPvs needs provisioningType Pvs"):
        validate(Params(disk="x", provisioningType="Mcs", installPvs="2402 LTSR CU2"))
    validate(Params(disk="x", provisioningType="Pvs", installPvs="2402.0.2000"))


def test_cli_refuses_a_component_option_before_launching(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {"provisioningType": "Pvs", "installMisa": True}}))
    proc = subprocess.run([*CE, "plan", "--job", str(job), str(tmp_path / "missing.qcow2")], capture_output=True,
                          text=True, timeout=60)
    # a job file's params refused by the step's validation are an invalid job, as pydantic's refusals are
    assert proc.returncode == 1 and "error [invalid_job]" in proc.stderr
    assert "installMisa needs provisioningType Mcs" in proc.stderr


# ---------------------------------------------------------------- the static scripts

@pytest.mark.parametrize("name", SCRIPTS)
def test_first_boot_scripts_are_static_and_read_values_only_as_json(name):
    text = firstboot.script_text(name).decode()
    for banned in ("Invoke-Expression", "iex ", "-Command", "-EncodedCommand", "cmd.exe /c", "cmd /c", "[scriptblock]",
                   "Add-Type", "{{", "}}"):
        assert banned.lower() not in text.lower(), f"{name} uses {banned}"
    if name != firstboot.RUNNER:
        assert "param([Parameter(Mandatory = $true)][string]$ParamsFile)" in text
        assert "ConvertFrom-Json" in text and "Get-Content -Raw -LiteralPath $ParamsFile" in text


def test_runner_counts_attempts_before_running_caps_retries_and_disarms():
    text = firstboot.script_text(firstboot.RUNNER).decode()
    count, run = text.index("$s.attempts = [int]$s.attempts + 1"), text.index("$code = Invoke-Action $action")
    assert text.index("Save-State $state", count) < run          # persisted before the action starts
    assert "[int]$s.attempts -ge [int]$action.retries" in text
    assert "$state.boots -gt [int]$plan.max_boots" in text
    assert text.count("Disarm") >= 4                               # defined + complete + gave-up + runner error
    assert "Restart-Computer" not in text and text.count("shutdown.exe") == 1  # only after a 3010, never to retry
    assert "Set-ItemProperty -LiteralPath $SetupKey -Name 'SetupType' -Value 0" in text


# ---------------------------------------------------------------- payload store

def make_store(root: Path, entries: dict[tuple[str, str], tuple[str, bytes]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for (_, _), (name, data) in entries.items():
        (root / name).write_bytes(data)
    write_manifest(root, [{"component": c, "version": v, "file": f} for (c, v), (f, _) in entries.items()])
    return root


def test_payload_store_verifies_size_and_sha256(tmp_path):
    store_dir = make_store(tmp_path / "s", {("pvs-target-device", "2402.0.2000"): ("PVS_Device_x64.msi", b"A" * 100)})
    store = PayloadStore(store_dir)
    (payload,) = store.find("pvs-target-device", "2402.0.2000")
    assert store.verified(payload) == store_dir / "PVS_Device_x64.msi"
    with pytest.raises(PayloadMissing, match="has no pvs-target-device version 2203.0.6000; it has version"):
        store.find("pvs-target-device", "2203.0.6000")
    (store_dir / "PVS_Device_x64.msi").write_bytes(b"B" * 100)
    with pytest.raises(PayloadMismatch, match="sha256"):
        store.verified(payload)
    (store_dir / "PVS_Device_x64.msi").write_bytes(b"A" * 99)
    with pytest.raises(PayloadMismatch, match="99 bytes, the manifest says 100"):
        store.verified(payload)
    (store_dir / "PVS_Device_x64.msi").unlink()
    with pytest.raises(PayloadMissing, match="is missing"):
        store.verified(payload)


def test_payload_manifest_problems_are_named(tmp_path):
    with pytest.raises(PayloadStoreInvalid, match="no manifest.json"):
        PayloadStore(tmp_path)
    (tmp_path / "manifest.json").write_text('{"payloads": [{"component": "x", "version": "1", "file": "../etc/passwd",'
                                            ' "sha256": "' + "0" * 64 + '", "size": 1}]}')
    with pytest.raises(PayloadStoreInvalid, match="plain file name"):
        PayloadStore(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PayloadStoreInvalid, match="not a valid manifest"):
        PayloadStore(tmp_path)


# ---------------------------------------------------------------- end to end on a sample image

VDA = b"MZ stand-in VDA server installer " * 1000
ALL_OPTIONS = {"provisioningType": "Mcs", "installMisa": True, "installMcsio": True, "domainUnjoin": True,
               "xdReconfigure": [{"ParameterName": "controllers", "ParameterValue": "ddc9.corp.example.com"},
                                 {"ParameterName": "portnumber", "ParameterValue": "8080"},
                                 {"ParameterName": "enable_hdx_ports", "ParameterValue": ""}]}


def ce_json(*args) -> dict:
    proc = subprocess.run([*CE, *args, "--json"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def applied(samples, tmp_path_factory):
    """win2016 (VDA 1912, domain CORP): dry run and real run; the re-plan is done by the read-back (``backs``)."""
    work = tmp_path_factory.mktemp("firstboot")
    sample = samples["win2016-vda1912"]
    before = sha256_file(sample.path)
    store = make_store(work / "store", {("vda-server-installer", "1912.0.9000.11"): ("VDAServerSetup_1912.exe", VDA)})
    child = disks.create_child(str(sample.path), str(work / "child.qcow2"), parent_fmt=sample.format).path
    job = work / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {**ALL_OPTIONS, "payloads": str(store)}}))
    child_before = sha256_file(child)
    plan = ce_json("plan", "--job", str(job), child)
    child_after_plan = sha256_file(child)
    result = ce_json("run", "--job", str(job), child)
    yield {"child": child, "job": job, "plan": plan, "result": result, "store": store,
           "dryRunUnchanged": child_before == child_after_plan}
    assert sha256_file(sample.path) == before


@pytest.fixture(scope="module")
def prepared(applied, backs):
    back = backs["prepared"]
    return {**{k: applied[k] for k in ("plan", "result", "store", "dryRunUnchanged")}, "replan": back["replan"],
            "back": {k: back[k] for k in ("report", "files", "hives")}}


@pytest.fixture(scope="module")
def backs(applied, others_applied, tmp_path_factory) -> dict:
    """ONE read-only appliance reads back the win2016 child (and plans its job again) and every other sample's
    child -- one launch, where a read-back per fixture and a `ce plan` re-plan took three."""
    work = tmp_path_factory.mktemp("backs")
    children = {"prepared": applied["child"], **others_applied["children"]}
    with Guest([Drive(children[n], "qcow2", readonly=True) for n in children]) as guest:
        devices = dict(zip(children, guest.devices()))
        out = {"prepared": read_back(guest, devices["prepared"], applied["child"], applied["job"], work)}
        for name in OTHERS:
            out[name] = read_other(guest, devices[name], children[name], work)
    return out


def read_back(guest: Guest, device: str, child: str, job: Path, work: Path) -> dict:
    """Inspect, the staged files, both hives, and ``job`` planned again in this process (tests/support/planning.py)."""
    report = inspect_guest(guest, disks.info(child), device=device)
    root = guest.windows_root(device=device)
    guest.mount_windows(root, readonly=True)
    files = {}
    base = guest.win_path(FB)
    for path in guest.g.find(base):                    # names come back as "/actions/x.ps1"
        if guest.g.is_file(base + path):
            files[path.lstrip("/")] = guest.g.read_file(base + path)
    hives = {name: registry.download_hive(guest, hive_path(guest, root, name), work)
             for name in ("SYSTEM", "SOFTWARE")}
    guest.g.umount_all()
    return {"report": report, "files": files, "hives": hives, "replan": plan_prepare_on(guest, device, job, child)}


def regipy_value(path: Path, key: str, name: str):
    hive = RegistryHive(str(path))
    try:
        found = hive.get_key(key)
    except RegistryKeyNotFoundException:
        return None
    for value in found.iter_values():
        if value.name == name:
            return value.value_type, value.value
    return None


@pytest.mark.slow
def test_dry_run_changes_nothing_and_equals_what_the_run_did(prepared):
    assert prepared["dryRunUnchanged"]
    applied = [o["change"] for o in prepared["result"]["outcomes"]]
    assert prepared["plan"]["changes"] == applied
    assert {o["status"] for o in prepared["result"]["outcomes"]} == {"applied"}
    assert prepared["result"].get("error") is None


@pytest.mark.slow
def test_a_second_run_plans_nothing(prepared):
    assert prepared["replan"]["changes"] == []


@pytest.mark.slow
def test_setup_cmdline_and_marker_are_exact_in_both_parsers(prepared):
    system, software = prepared["back"]["hives"]["SYSTEM"], prepared["back"]["hives"]["SOFTWARE"]
    cmd = firstboot.command_line("/Windows")
    assert cmd == (r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe -NoProfile -NonInteractive "
                   r"-ExecutionPolicy Bypass -File C:\Windows\Setup\ce-firstboot\runner.ps1")
    with Hive.open(system) as h:
        assert (h.get("Setup", "CmdLine").type, h.get("Setup", "CmdLine").data) == (RegType.SZ, cmd)
        assert (h.get("Setup", "SetupType").type, h.get("Setup", "SetupType").data) == (RegType.DWORD, 2)
    with Hive.open(software) as h:
        marker = h.get(r"Citrix\ImagePortability", "PendingDomainUnjoin")
        assert (marker.type, marker.data) == (RegType.SZ, "corp.example.com")
        assert h.get_data(r"Citrix\VirtualDesktopAgent", "ListOfDDCs") == "ddc9.corp.example.com"
    assert regipy_value(system, r"\Setup", "CmdLine") == ("REG_SZ", cmd)
    assert regipy_value(system, r"\Setup", "SetupType") == ("REG_DWORD", 2)
    assert regipy_value(software, r"\Citrix\ImagePortability", "PendingDomainUnjoin") == ("REG_SZ", "corp.example.com")


@pytest.mark.slow
def test_staged_files_are_the_shipped_scripts_plus_json_data(prepared):
    files = prepared["back"]["files"]
    assert files["runner.ps1"] == firstboot.script_text("runner.ps1")
    for name in ("vda-reconfigure.ps1", "vda-add-components.ps1", "domain-unjoin.ps1"):
        assert files[f"actions/{name}"] == firstboot.script_text(name)
    assert files["payloads/VDAServerSetup_1912.exe"] == VDA
    plan = json.loads(files["plan.json"])
    actions = {a["name"]: a for a in plan["actions"]}
    assert plan["max_boots"] == firstboot.MAX_BOOTS
    assert {n: (a["retries"], a["required"], a["script"]) for n, a in actions.items()} == {
        "vda-reconfigure": (2, False, "vda-reconfigure.ps1"),
        "vda-add-components": (2, True, "vda-add-components.ps1"),
        "domain-unjoin": (3, True, "domain-unjoin.ps1")}
    params = {n: json.loads(files[f"actions/{a['id']}.json"]) for n, a in actions.items()}
    assert params == {"vda-reconfigure": {"arguments": ["/enable_hdx_ports", "/portnumber", "8080"]},
                      "vda-add-components": {"components": ["Machine Identity Service", "Citrix MCS IODriver"],
                                             "installer": "VDAServerSetup_1912.exe"},
                      "domain-unjoin": {"workgroup": "WORKGROUP"}}
    # every staged byte outside the payload is shipped text or JSON with plain tokens
    for path, data in files.items():
        if path.endswith(".json"):
            assert not re.search(r"[\"'`$%&|;<>^]", "".join(json.dumps(v) for v in json.loads(data).values())
                                 .replace('"', "")), path


@pytest.mark.slow
def test_inspect_reports_the_staged_actions_and_the_pending_unjoin(prepared):
    report = prepared["back"]["report"]
    assert report.domain.pending_unjoin == "corp.example.com"
    fb = report.first_boot
    assert fb.armed and fb.boots == 0 and fb.log == []
    assert [(a["name"], a["status"], a["attempts"]) for a in fb.staged] == [
        ("vda-reconfigure", "pending", 0), ("vda-add-components", "pending", 0), ("domain-unjoin", "pending", 0)]


# ---------------------------------------------------------------- other images, dry runs only

def test_md5_pre_check_refuses_another_disk_before_launching(samples, tmp_path):
    disk = str(samples["win2022-vda2411-mcs"].path)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {"provisioningType": "Mcs", "md5Hash": "0" * 32}}))
    proc = subprocess.run([*CE, "plan", "--job", str(job), disk], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "error [md5_mismatch]: the contents of" in proc.stderr
    assert f"the job expects {'0' * 32}: wrong or damaged disk" in proc.stderr
    job.write_text(json.dumps({"type": "prepare", "params": {"provisioningType": "Mcs", "md5Hash": "xyz"}}))
    proc = subprocess.run([*CE, "plan", "--job", str(job), disk], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "params.md5Hash: String should match pattern" in proc.stderr


@pytest.mark.slow
def test_components_already_present_stage_nothing_and_need_no_store(samples, tmp_path):
    disk = str(samples["win2022-vda2411-mcs"].path)
    md5 = hashing.hash_disk(disk, algorithms=("md5",)).hashes["md5"]
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {"provisioningType": "Mcs", "installMisa": True,
                                                             "installMcsio": True, "md5Hash": md5.upper()}}))
    plan = ce_json("plan", "--job", str(job), disk)
    assert plan["changes"] == []
    assert sorted(w["code"] for w in plan["warnings"]) == ["mcsio_present", "misa_present"]


@pytest.mark.slow
def test_pvs_upgrade_is_staged_and_a_swapped_installer_is_refused(samples, tmp_path):
    store = make_store(tmp_path / "store", {("pvs-target-device", "2402.0.2000"): ("PVS_Device_x64.exe", b"P" * 4096)})
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {"provisioningType": "Pvs", "installPvs": "2402 LTSR CU2",
                                                             "payloads": str(store)}}))
    disk = str(samples["win2019-vda2203-pvs"].path)
    plan = ce_json("plan", "--job", str(job), disk)
    action = next(c for c in plan["changes"] if c["kind"] == "first_boot_action")
    assert action["name"] == "pvs-install" and action["params"] == {"installer": "PVS_Device_x64.exe"}
    assert "upgrade the Citrix Provisioning target device 2402.0.2000 (found 7.33.5000.18)" == action["reason"]
    assert any(c["kind"] == "file_write" and c["path"] == FB + r"\payloads\PVS_Device_x64.exe" for c in plan["changes"])
    (store / "PVS_Device_x64.exe").write_bytes(b"Q" * 4096)
    proc = subprocess.run([*CE, "plan", "--job", str(job), disk], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1 and "error [payload_mismatch]" in proc.stderr and "sha256" in proc.stderr
    assert "starting the appliance" not in proc.stderr          # refused by validate, before the launch


# ---------------------------------------------------------------- every other sample, every option it can take

OTHERS = {
    # sample: (params, {staged action: params}, pending unjoin)
    "win2019-vda2203-pvs": (
        {"provisioningType": "Pvs", "installPvs": "2402 LTSR CU2", "domainUnjoin": True,
         "xdReconfigure": [{"ParameterName": "enable_real_time_transport", "ParameterValue": "true"}]},
        {"pvs-install": {"installer": "PVS_Device_x64_2402.exe"},
         "domain-unjoin": {"workgroup": "WORKGROUP"},
         "vda-reconfigure": {"arguments": ["/enable_real_time_transport"]}}, "euc.lab.internal"),
    "win10-vda2203-policy": (
        {"provisioningType": "Mcs", "installMisa": True, "domainUnjoin": True,
         "xdReconfigure": [{"ParameterName": "wem_cloud_connectors", "ParameterValue": "cc1.corp.example.com"}]},
        {"vda-add-components": {"installer": "VDAWorkstationSetup_2203.exe",
                                "components": ["Machine Identity Service"]},
         "domain-unjoin": {"workgroup": "WORKGROUP"},
         "vda-reconfigure": {"arguments": ["/wem_cloud_connectors", "cc1.corp.example.com"]}}, "corp.example.com"),
    "win2022-vda2411-mcs": (
        {"provisioningType": "Mcs", "installMisa": True, "installMcsio": True, "domainUnjoin": True,
         "xdReconfigure": [{"ParameterName": "wem_server", "ParameterValue": "wem.corp.example.com"}]},
        {"domain-unjoin": {"workgroup": "WORKGROUP"},
         "vda-reconfigure": {"arguments": ["/wem_server", "wem.corp.example.com"]}}, "corp.example.com"),
    "win11-vda2402-policy": (                       # VDA 2402 is not in the support table; not domain joined
        {"provisioningType": "Mcs", "domainUnjoin": True,
         "xdReconfigure": [{"ParameterName": "portnumber", "ParameterValue": "8080"}]}, {}, ""),
}


@pytest.fixture(scope="module")
def others_applied(samples, tmp_path_factory):
    work = tmp_path_factory.mktemp("others")
    store = make_store(work / "store", {
        ("pvs-target-device", "2402.0.2000"): ("PVS_Device_x64_2402.exe", b"PVS stand-in " * 300),
        ("vda-workstation-installer", "2203.0.6000.9"): ("VDAWorkstationSetup_2203.exe", b"VDA stand-in " * 300)})
    children, results = {}, {}
    for name, (params, _, _) in OTHERS.items():
        sample = samples[name]
        children[name] = disks.create_child(str(sample.path), str(work / f"{name}.qcow2"),
                                            parent_fmt=sample.format).path
        job = work / f"{name}.json"
        job.write_text(json.dumps({"type": "prepare", "params": {**params, "payloads": str(store)}}))
        results[name] = ce_json("run", "--job", str(job), children[name])
    return {"children": children, "results": results}


@pytest.fixture(scope="module")
def others(others_applied, backs):
    return others_applied["results"], {name: backs[name] for name in OTHERS}


def read_other(guest: Guest, device: str, child: str, work: Path) -> dict:
    report = inspect_guest(guest, disks.info(child), device=device)
    root = guest.windows_root(device=device)
    guest.mount_windows(root, readonly=True)
    base = guest.win_path(FB)
    files = {p.lstrip("/"): guest.g.read_file(base + p) for p in (guest.g.find(base) if guest.g.is_dir(base)
                                                                    else []) if guest.g.is_file(base + p)}
    system = registry.download_hive(guest, hive_path(guest, root, "SYSTEM"), work)
    guest.g.umount_all()
    return {"report": report, "files": files, "system": system}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OTHERS))
def test_every_sample_gets_exactly_the_actions_it_needs(others, name):
    results, backs = others
    _, expected, pending = OTHERS[name]
    result, back = results[name], backs[name]
    assert result.get("error") is None and {o["status"] for o in result["outcomes"]} <= {"applied"}
    files = back["files"]
    staged = {a["name"]: json.loads(files[f"actions/{a['id']}.json"])
              for a in (json.loads(files["plan.json"])["actions"] if files else [])}
    assert staged == expected
    assert back["report"].domain.pending_unjoin == pending
    cmd = regipy_value(back["system"], r"\Setup", "CmdLine")
    if expected:
        assert cmd == ("REG_SZ", firstboot.command_line("/Windows"))
        assert regipy_value(back["system"], r"\Setup", "SetupType") == ("REG_DWORD", 2)
        assert [a["status"] for a in back["report"].first_boot.staged] == ["pending"] * len(expected)
        for action in expected:
            script = {"pvs-install": "pvs-install.ps1", "domain-unjoin": "domain-unjoin.ps1",
                      "vda-reconfigure": "vda-reconfigure.ps1", "vda-add-components": "vda-add-components.ps1"}[action]
            assert files[f"actions/{script}"] == firstboot.script_text(script)
    else:
        assert cmd is None and back["report"].first_boot is None
        codes = sorted(w["code"] for w in result["warnings"])
        assert codes == ["not_domain_joined", "vda_unsupported"]


# ---------------------------------------------------------------- hive permissions survive the replacement

@pytest.mark.slow
def test_restrictive_hive_permissions_are_restored_at_first_boot(samples, tmp_path):
    """ntfs-3g gives a replacing hive "Everyone: full control"; ce stages the original descriptor's restore."""
    disk = str(tmp_path / "w2019.qcow2")
    disks.convert(str(samples["win2019-vda2203-pvs"].path), disk, "qcow2", src_fmt="qcow2")
    original = {}
    with Guest([Drive(disk, "qcow2", readonly=False)]) as guest:        # a Windows-like, restrictive descriptor
        root = guest.windows_root()
        guest.g.mount_options("permissions", root.device, "/")
        for hive in ("SYSTEM", "SOFTWARE"):
            path = f"/Windows/System32/config/{hive}"
            guest.g.chmod(0o600, path)
            original[hive] = guest.g.lgetxattr(path, registry.NTFS_ACL_XATTR)
            assert not ntfs.grants_everyone_full_control(original[hive])
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {"provisioningType": "Pvs", "domainUnjoin": True}}))
    result = ce_json("run", "--job", str(job), disk)
    actions = {o["change"]["name"]: o["change"] for o in result["outcomes"]
               if o["change"]["kind"] == "first_boot_action"}
    assert sorted(actions) == ["domain-unjoin", "restore-acl-software", "restore-acl-system"]
    for hive in ("SYSTEM", "SOFTWARE"):
        params = actions[f"restore-acl-{hive.lower()}"]["params"]
        assert params == {"path": rf"C:\Windows\System32\config\{hive}", "sd": original[hive].hex()}
        assert actions[f"restore-acl-{hive.lower()}"]["required"]
    warned = [w["message"] for w in result["warnings"] if w["code"] == "hive_permissions"]
    assert len(warned) == 2 and all("restore-acl" in w for w in warned)
    assert ce_json("plan", "--job", str(job), disk)["changes"] == []
