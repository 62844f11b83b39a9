"""prepare targetPlatform: every platform on sample images (all five for azure), through `ce plan` / `ce run`
on qcow2 children of the samples, read back with hivex and with regipy.

Each case runs: (dry run) -> run -> re-plan. The dry run must leave the child byte-identical and list exactly the
changes the run reports; the re-plan must be empty. Every run is its own `ce run`; the first dry run is a real
`ce plan`, the others are planned in this process on one shared read-only appliance (tests/support/planning.py), and
the re-plans on the one read-only appliance that then reads every child back -- 15 launches instead of 30. Expected
values below are written out literally (from the platform documents), not taken from ce/data/platforms.json.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from regipy.registry import RegistryHive

from ce import disks, registry
from ce.firstboot import script_text
from ce.guest import Drive, Guest
from ce.payloads import write_manifest
from ce.plan import Planner, apply, hive_path
from ce.registry import Hive, RegType, sha256_file
from images.content import pe_stub
from steps.prepare.platform import rules
from tests.support.planning import plan_each, plan_prepare_on

pytestmark = pytest.mark.slow
CE = [sys.executable, "-m", "ce.cli"]
SCSI_VERSION = "00ff090000000000" + "7be9364d25e3ce11bfc108002be10318" + "00" * 24   # {4D36E97B-...} SCSIAdapter
NET_VERSION = "00ff090000000000" + "72e9364d25e3ce11bfc108002be10318" + "00" * 24    # {4D36E972-...} Net
HDC_CLASS = "{4d36e96a-e325-11ce-bfc1-08002be10318}"
SYSTEM_CLASS = "{4d36e97d-e325-11ce-bfc1-08002be10318}"
DISK_CLASS = "{4d36e967-e325-11ce-bfc1-08002be10318}"
VMWARE_KEY = "{4F1A3F2C-5555-4E4E-9F9F-0123456789AB}"
XEN_KEY = "{E4F5A6B7-6666-4F4F-8A8A-0123456789AB}"
NUTANIX_KEY = "{F5A6B7C8-7777-4A5A-9B9B-0123456789AB}"
FW_RULES = r"Services\SharedAccess\Parameters\FirewallPolicy\FirewallRules"
RDP_RULE = ("v2.30|Action=Allow|Active=FALSE|Dir=In|Protocol=6|LPort=3389|App=%SystemRoot%\\system32\\svchost.exe|"
            "Svc=termservice|Name=@FirewallAPI.dll,-28775|EmbedCtxt=@FirewallAPI.dll,-28752|")
DHCP_RULE = "v2.30|Action=Allow|Active=FALSE|Dir=In|Protocol=17|LPort=68|Name=@FirewallAPI.dll,-25301|"

# case: (sample, platform, payload store?, dry run first?, seed the image first?)
CASES = {
    "azure-win2016": ("win2016-vda1912", "azure", True, True, False),
    "azure-win2019": ("win2019-vda2203-pvs", "azure", False, False, False),
    "azure-win2022": ("win2022-vda2411-mcs", "azure", False, False, False),
    "azure-win10": ("win10-vda2203-policy", "azure", False, False, False),
    "azure-win11": ("win11-vda2402-policy", "azure", False, False, False),
    "aws-win2019": ("win2019-vda2203-pvs", "aws", True, True, False),
    "gcp-win10": ("win10-vda2203-policy", "gcp", True, True, False),
    "vsphere-win2022": ("win2022-vda2411-mcs", "vsphere", False, True, True),
    "xenserver-win2016": ("win2016-vda1912", "xenserver", False, True, False),
    "nutanix-win11": ("win11-vda2402-policy", "nutanix", True, True, False),
}
CCS = {"win2016-vda1912": "ControlSet001", "win2019-vda2203-pvs": "ControlSet002",
       "win2022-vda2411-mcs": "ControlSet001", "win10-vda2203-policy": "ControlSet001",
       "win11-vda2402-policy": "ControlSet003"}


def driver_bytes(name: str, version: str) -> bytes:
    return pe_stub(f"stand-in driver {name} {version}") + b"\0" * 64


# component -> version -> files (the older awsnvme must never be chosen)
PAYLOADS = {
    "driver/storflt": {"10.0.14393.0": ["storflt.sys", "storflt.inf", "storflt.cat"]},
    "driver/awsnvme": {"1.4.0": ["AWSNVMe_1.4.sys"], "1.5.1": ["AWSNVMe.sys", "awsnvme.inf", "awsnvme.cat"]},
    "driver/ena": {"2.8.0": ["ena.sys", "ena.inf", "ena.cat"]},
    "driver/gvnic": {"1.2.0": ["gvnic.sys", "gvnic.inf"]},
    "driver/vioscsi": {"100.95.104.26200": ["vioscsi.sys", "vioscsi.inf", "vioscsi.cat"]},
    "driver/netkvm": {"100.95.104.26200": ["netkvm.sys", "netkvm.inf", "netkvm.cat"]},
}


def make_store(root: Path) -> Path:
    root.mkdir()
    entries = []
    for component, versions in PAYLOADS.items():
        for version, files in versions.items():
            for name in files:
                (root / name).write_bytes(driver_bytes(name, version) if name.endswith(".sys")
                                          else f"; {name} {version}\r\n".encode())
                entries.append({"component": component, "version": version, "file": name})
    write_manifest(root, entries)
    return root


def ce(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CE, *args], capture_output=True, text=True, timeout=1200)


def ce_json(*args) -> dict:
    proc = ce(*args, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def seed(child: str, ccs: str, work: Path) -> None:
    """Give the image what the samples lack: xenfilt in two class filter lists, RDP firewall rules (disabled), and
    a policy copy of fDenyTSConnections, written with ce's own plan/apply (one launch)."""
    with Guest([Drive(child, "qcow2", readonly=False)]) as guest:
        root = guest.windows_root()
        guest.mount_windows(root, readonly=False)
        planner = Planner("seed", guest, root, work)
        try:
            classes = rf"{ccs}\Control\Class"
            planner.set("SYSTEM", rf"{classes}\{HDC_CLASS}", "UpperFilters", RegType.MULTI_SZ, ["xenfilt"])
            planner.set("SYSTEM", rf"{classes}\{SYSTEM_CLASS}", "UpperFilters", RegType.MULTI_SZ,
                        ["xenfilt", "cetestfilter"])
            planner.set("SYSTEM", rf"{ccs}\{FW_RULES}", "RemoteDesktop-UserMode-In-TCP", RegType.SZ, RDP_RULE)
            planner.set("SYSTEM", rf"{ccs}\{FW_RULES}", "CoreNet-DHCP-In", RegType.SZ, DHCP_RULE)
            planner.set("SOFTWARE", r"Policies\Microsoft\Windows NT\Terminal Services", "fDenyTSConnections",
                        RegType.DWORD, 1)
            plan = planner.plan
        finally:
            planner.close()
        assert apply(guest, root, plan).error is None


@pytest.fixture(scope="module")
def runs(samples, tmp_path_factory):
    work = tmp_path_factory.mktemp("platform")
    store = make_store(work / "store")
    before = {name: sha256_file(samples[name].path) for name in CCS}
    out = {case: child_and_job(samples, case, store, work) for case in CASES}
    dry = [case for case, spec in CASES.items() if spec[3]]
    pre = {case: sha256_file(out[case]["child"]) for case in dry}
    out[dry[0]]["plan"] = ce_json("plan", "--job", str(out[dry[0]]["job"]), out[dry[0]]["child"])
    for case, plan in plan_each({c: (out[c]["job"], out[c]["child"]) for c in dry[1:]}).items():
        out[case]["plan"] = plan
    for case in dry:
        out[case]["dryRunUnchanged"] = pre[case] == sha256_file(out[case]["child"])
    for record in out.values():
        record["result"] = ce_json("run", "--job", str(record["job"]), record["child"])
    failed = failing_run(samples["win2019-vda2203-pvs"], work)
    back = read_back({**{c: r["child"] for c, r in out.items()}, "failed": failed["child"],
                      "pristine": str(samples["win2019-vda2203-pvs"].path)}, work,
                     replan={c: r["job"] for c, r in out.items()})
    for case, record in out.items():
        record["replan"] = back[case]["replan"]
    yield {"runs": out, "back": back, "failed": failed, "store": store}
    assert {name: sha256_file(samples[name].path) for name in CCS} == before


def child_and_job(samples, case: str, store: Path, work: Path) -> dict:
    """The case's qcow2 child of its sample (seeded if the case says so) and its job file."""
    sample_name, platform, with_store, _, seeded = CASES[case]
    sample = samples[sample_name]
    child = disks.create_child(str(sample.path), str(work / f"{case}.qcow2"), parent_fmt=sample.format).path
    if seeded:
        seed(child, CCS[sample_name], work)
    params = {"provisioningType": "Mcs", "targetPlatform": platform}
    if with_store:
        params["payloads"] = str(store)
    job = work / f"{case}.json"
    job.write_text(json.dumps({"type": "prepare", "params": params}))
    return {"child": child, "job": job, "sample": sample_name, "platform": platform}


def failing_run(sample, work: Path) -> dict:
    """nutanix boots from vioscsi, which this image lacks, and no store is given: a clear error, nothing written."""
    child = disks.create_child(str(sample.path), str(work / "failed.qcow2"), parent_fmt=sample.format).path
    job = work / "failed.json"
    job.write_text(json.dumps({"type": "prepare", "params": {"provisioningType": "Mcs",
                                                             "targetPlatform": "nutanix"}}))
    proc = ce("run", "--job", str(job), child)
    return {"child": child, "proc": proc}


def read_back(children: dict[str, str], work: Path, replan: dict[str, Path]) -> dict:
    """One read-only appliance: the hives and the files ce may have written, for every child, and the plan of
    ``replan``'s job (name -> job file) again for those children."""
    names = list(children)
    back = {}
    drives = [Drive(children[n], disks.info(children[n]).format, readonly=True) for n in names]
    with Guest(drives) as guest:
        for name, device in zip(names, guest.devices()):
            root = guest.windows_root(device=device)
            guest.mount_windows(root, readonly=True)
            local = work / f"back-{name}"
            local.mkdir()
            hives = {h: registry.download_hive(guest, hive_path(guest, root, h), local) for h in ("SYSTEM", "SOFTWARE")}
            files = {}
            for base in (r"C:\Windows\Setup\ce-firstboot", r"C:\Windows\Drivers\ce"):
                if guest.exists(base):
                    top = guest.win_path(base)
                    for path in (p.lstrip("/") for p in guest.g.find(top)):
                        if guest.g.is_file(f"{top}/{path}"):
                            files[base + "\\" + path.replace("/", "\\")] = guest.g.read_file(f"{top}/{path}")
            drivers = guest.win_path(r"C:\Windows\System32\drivers")
            for entry in guest.g.ls(drivers):
                files["C:\\Windows\\System32\\drivers\\" + entry] = guest.g.read_file(f"{drivers}/{entry}")
            back[name] = {"hives": hives, "files": files}
            guest.g.umount_all()
            if name in replan:
                back[name]["replan"] = plan_prepare_on(guest, device, replan[name], children[name])
    return back


# ---------------------------------------------------------------- reading values two ways

def hivex_value(path: Path, key: str, name: str):
    with Hive.open(path) as hive:
        value = hive.get(key, name)
    return None if value is None else (value.type, value.data)


def regipy_value(path: Path, key: str, name: str):
    hive = RegistryHive(str(path))
    try:
        values = list(hive.get_key("\\" + key).iter_values())
    except Exception:                       # regipy: RegistryKeyNotFoundException
        return None
    for value in values:
        if value.name == (name or "(default)"):
            return value.value_type, value.value
    return None


def assert_value(back: dict, hive: str, key: str, name: str, rtype: RegType, data) -> None:
    path = back["hives"][hive]
    assert hivex_value(path, key, name) == (rtype, data), f"{hive}\\{key}\\{name}"
    regipy_data = data.hex() if isinstance(data, bytes) else data
    assert regipy_value(path, key, name) == (f"REG_{rtype.name}", regipy_data), f"regipy {hive}\\{key}\\{name}"


def assert_values(back: dict, expected: list[tuple]) -> None:
    for hive, key, name, rtype, data in expected:
        assert_value(back, hive, key, name, rtype, data)


def dword(hive: str, key: str, name: str, data: int) -> tuple:
    return hive, key, name, RegType.DWORD, data


def common(ccs: str, cloud: bool) -> list[tuple]:
    values = [dword("SYSTEM", rf"{ccs}\Services\partmgr\Parameters", "SanPolicy", 1),
              dword("SYSTEM", rf"{ccs}\Control\CrashControl", "AutoReboot", 0),
              dword("SYSTEM", rf"{ccs}\Control\Terminal Server", "fDenyTSConnections", 0)]
    if cloud:
        values.append(dword("SYSTEM", rf"{ccs}\Control\TimeZoneInformation", "RealTimeIsUniversal", 1))
    return values


def starts(ccs: str, **services: int) -> list[tuple]:
    return [dword("SYSTEM", rf"{ccs}\Services\{name}", "Start", start) for name, start in services.items()]


def new_service(ccs: str, name: str, file: str, group: str, start: int) -> list[tuple]:
    key = rf"{ccs}\Services\{name}"
    return [dword("SYSTEM", key, "Type", 1), dword("SYSTEM", key, "Start", start),
            dword("SYSTEM", key, "ErrorControl", 1), ("SYSTEM", key, "Group", RegType.SZ, group),
            ("SYSTEM", key, "ImagePath", RegType.EXPAND_SZ, rf"System32\drivers\{file}")]


def driver_database(service: str, pci_ids: list[str], version_hex: str) -> list[tuple]:
    inf, label, config = f"ce-{service}.inf", f"ce-{service}.inf_ce", f"ce_{service}"
    ddb = "DriverDatabase"
    values = [("SYSTEM", rf"{ddb}\DriverInfFiles\{inf}", "", RegType.MULTI_SZ, [label]),
              ("SYSTEM", rf"{ddb}\DriverInfFiles\{inf}", "Active", RegType.SZ, label),
              ("SYSTEM", rf"{ddb}\DriverInfFiles\{inf}", "Configurations", RegType.MULTI_SZ, [config]),
              ("SYSTEM", rf"{ddb}\DriverPackages\{label}", "Version", RegType.BINARY, bytes.fromhex(version_hex)),
              dword("SYSTEM", rf"{ddb}\DriverPackages\{label}\Configurations\{config}", "ConfigFlags", 0)]
    for pci in pci_ids:
        values += [("SYSTEM", rf"{ddb}\DeviceIds\PCI\{pci}", inf, RegType.BINARY, bytes([1, 0xFF, 0, 0])),
                   ("SYSTEM", rf"{ddb}\DriverPackages\{label}\Descriptors\PCI\{pci}", "Configuration", RegType.SZ,
                    config)]
    return values


AZURE_SETTINGS = [
    ("SYSTEM", r"{ccs}\Control\Session Manager\Environment", "TEMP", RegType.EXPAND_SZ, r"%SystemRoot%\TEMP"),
    ("SYSTEM", r"{ccs}\Control\Session Manager\Environment", "TMP", RegType.EXPAND_SZ, r"%SystemRoot%\TEMP"),
    dword("SYSTEM", r"{ccs}\Control\Terminal Server\WinStations\RDP-Tcp", "PortNumber", 3389),
    dword("SYSTEM", r"{ccs}\Control\Terminal Server\WinStations\RDP-Tcp", "LanAdapter", 0),
    dword("SYSTEM", r"{ccs}\Control\Terminal Server\WinStations\RDP-Tcp", "UserAuthentication", 1),
    dword("SYSTEM", r"{ccs}\Control\Terminal Server\WinStations\RDP-Tcp", "KeepAliveTimeout", 1),
    dword("SYSTEM", r"{ccs}\Control\Terminal Server\WinStations\RDP-Tcp", "fInheritReconnectSame", 1),
    dword("SYSTEM", r"{ccs}\Control\Terminal Server\WinStations\RDP-Tcp", "fReconnectSame", 0),
    dword("SYSTEM", r"{ccs}\Control\Terminal Server\WinStations\RDP-Tcp", "MaxInstanceCount", 0xFFFFFFFF),
    dword("SOFTWARE", r"Policies\Microsoft\Windows NT\Terminal Services", "KeepAliveEnable", 1),
    dword("SOFTWARE", r"Policies\Microsoft\Windows NT\Terminal Services", "KeepAliveInterval", 1),
    dword("SOFTWARE", r"Policies\Microsoft\Windows NT\Terminal Services", "fDisableAutoReconnect", 0),
    dword("SYSTEM", r"{ccs}\Control\CrashControl", "CrashDumpEnabled", 2),
    ("SYSTEM", r"{ccs}\Control\CrashControl", "DumpFile", RegType.EXPAND_SZ, r"%SystemRoot%\MEMORY.DMP"),
    dword("SYSTEM", r"{ccs}\Control\CrashControl", "NMICrashDump", 1),
]


def azure(ccs: str) -> list[tuple]:
    return (common(ccs, cloud=True) + starts(ccs, vmbus=0, storvsc=0, intelide=0, atapi=0, netvsc=3, W32Time=2,
                                             Dhcp=2, Netlogon=3, TermService=3)
            + [(h, k.replace("{ccs}", ccs), n, t, d) for h, k, n, t, d in AZURE_SETTINGS])


XEN_SERVICES = dict(xenbus=4, xenfilt=4, xenvbd=4, xenvif=4, xennet=4, xeniface=4, XenAgent=4)
EXPECTED = {
    "azure-win2016": azure("ControlSet001") + starts("ControlSet001", VMTools=4, pvscsi=4, vmxnet3ndis6=4)
    + new_service("ControlSet001", "storflt", "storflt.sys", "System Bus Extender", 0)
    + [("SOFTWARE", r"Microsoft\Windows\CurrentVersion", "DevicePath", RegType.EXPAND_SZ,
        r"%SystemRoot%\inf;%SystemRoot%\Drivers\ce")],
    "azure-win2019": azure("ControlSet002"),
    "azure-win2022": azure("ControlSet001") + starts("ControlSet001", **XEN_SERVICES),
    "azure-win10": azure("ControlSet001") + starts("ControlSet001", vioscsi=4, netkvm=4),
    "azure-win11": azure("ControlSet003"),
    "aws-win2019": common("ControlSet002", cloud=True) + starts("ControlSet002", intelide=0, atapi=0, Dhcp=2)
    + new_service("ControlSet002", "AWSNVMe", "AWSNVMe.sys", "SCSI miniport", 0)
    + new_service("ControlSet002", "ena", "ena.sys", "NDIS", 3)
    + driver_database("awsnvme", ["VEN_1D0F&DEV_8061&REV_00", "VEN_1D0F&DEV_0061&REV_00"], SCSI_VERSION)
    + driver_database("ena", ["VEN_1D0F&DEV_EC20&REV_00", "VEN_1D0F&DEV_EC21&REV_00"], NET_VERSION)
    + [("SYSTEM", r"DriverDatabase\DriverPackages\ce-awsnvme.inf_ce\Configurations\ce_awsnvme", "Service",
        RegType.SZ, "AWSNVMe"),
       ("SYSTEM", r"DriverDatabase\DriverPackages\ce-ena.inf_ce\Configurations\ce_ena", "Service", RegType.SZ, "ena")],
    "gcp-win10": common("ControlSet001", cloud=True) + starts("ControlSet001", vioscsi=0, netkvm=3)
    + new_service("ControlSet001", "gvnic", "gvnic.sys", "NDIS", 3)
    + driver_database("gvnic", ["VEN_1AE0&DEV_0042&REV_00"], NET_VERSION)
    + [dword("SYSTEM", r"ControlSet001\Services\vioscsi\Parameters\Device", "EnableQueryAccessAlignment", 1),
       dword("SYSTEM", r"ControlSet001\Services\Tcpip\Parameters", "KeepAliveTime", 300000),
       dword("SYSTEM", r"ControlSet001\Control\Terminal Server\WinStations\RDP-Tcp", "UserAuthentication", 1)],
    "vsphere-win2022": common("ControlSet001", cloud=False) + starts("ControlSet001", storahci=0, **XEN_SERVICES)
    + [("SYSTEM", rf"ControlSet001\Control\Class\{SYSTEM_CLASS}", "UpperFilters", RegType.MULTI_SZ, ["cetestfilter"]),
       ("SYSTEM", rf"ControlSet001\Control\Class\{DISK_CLASS}", "UpperFilters", RegType.MULTI_SZ,
        ["CtxMcsWbc", "partmgr"]),
       ("SYSTEM", rf"ControlSet001\{FW_RULES}", "RemoteDesktop-UserMode-In-TCP", RegType.SZ,
        RDP_RULE.replace("Active=FALSE", "Active=TRUE")),
       ("SYSTEM", rf"ControlSet001\{FW_RULES}", "CoreNet-DHCP-In", RegType.SZ, DHCP_RULE),
       dword("SOFTWARE", r"Policies\Microsoft\Windows NT\Terminal Services", "fDenyTSConnections", 0)],
    "xenserver-win2016": common("ControlSet001", cloud=False)
    + starts("ControlSet001", intelide=0, atapi=0, VMTools=4, pvscsi=4, vmxnet3ndis6=4),
    "nutanix-win11": common("ControlSet003", cloud=False)
    + new_service("ControlSet003", "vioscsi", "vioscsi.sys", "SCSI miniport", 0)
    + new_service("ControlSet003", "netkvm", "netkvm.sys", "NDIS", 3)
    + driver_database("vioscsi", ["VEN_1AF4&DEV_1004&REV_00", "VEN_1AF4&DEV_1048&REV_01"], SCSI_VERSION)
    + driver_database("netkvm", ["VEN_1AF4&DEV_1000&REV_00", "VEN_1AF4&DEV_1041&REV_01"], NET_VERSION)
    + [("SOFTWARE", r"Microsoft\Windows\CurrentVersion", "DevicePath", RegType.EXPAND_SZ,
        r"%SystemRoot%\inf;%SystemRoot%\Drivers\ce")],
}

# first-boot actions each case stages: name -> params
ACTIONS = {
    "azure-win2016": {"remove-vmware": {"uninstall_key": VMWARE_KEY, "wow64": False},
                      "platform-drivers": {"packages": ["storflt"]}, "platform-rdp-firewall": {}},
    "azure-win2019": {"platform-rdp-firewall": {}},
    "azure-win2022": {"remove-xenserver": {"uninstall_key": XEN_KEY, "wow64": False}, "platform-rdp-firewall": {}},
    "azure-win10": {"remove-nutanix": {"uninstall_key": NUTANIX_KEY, "wow64": False}, "platform-rdp-firewall": {}},
    "azure-win11": {"platform-rdp-firewall": {}},
    "aws-win2019": {"platform-drivers": {"packages": ["awsnvme", "ena"]}, "platform-rdp-firewall": {}},
    "gcp-win10": {"platform-drivers": {"packages": ["gvnic"]}, "platform-rdp-firewall": {}},
    "vsphere-win2022": {"remove-xenserver": {"uninstall_key": XEN_KEY, "wow64": False}},
    "xenserver-win2016": {"remove-vmware": {"uninstall_key": VMWARE_KEY, "wow64": False},
                          "platform-rdp-firewall": {}},
    "nutanix-win11": {"platform-drivers": {"packages": ["vioscsi", "netkvm"]}, "platform-rdp-firewall": {}},
}

WARNINGS = {
    "azure-win2016": {"service_missing", "platform_agent_missing"},
    "azure-win2019": {"driver_missing", "service_missing", "platform_agent_missing"},
    "azure-win2022": {"driver_missing", "service_missing", "platform_agent_missing"},
    "azure-win10": {"driver_missing", "service_missing", "platform_agent_missing"},
    "azure-win11": {"driver_missing", "service_missing", "platform_agent_missing"},
    "aws-win2019": {"driver_missing", "platform_agent_missing"},             # stornvme: no payload
    "gcp-win10": {"driver_missing", "platform_agent_missing"},               # stornvme
    "vsphere-win2022": {"driver_missing", "platform_agent_missing"},         # LSI_SAS, e1iexpress
    "xenserver-win2016": {"platform_agent_missing"},
    "nutanix-win11": {"platform_agent_missing"},
}

# driver files copied from the store: image path -> (payload file, version)
COPIED = {
    "azure-win2016": {"storflt": ("storflt", "10.0.14393.0", ["storflt.sys", "storflt.inf", "storflt.cat"])},
    "aws-win2019": {"AWSNVMe": ("awsnvme", "1.5.1", ["AWSNVMe.sys", "awsnvme.inf", "awsnvme.cat"]),
                    "ena": ("ena", "2.8.0", ["ena.sys", "ena.inf", "ena.cat"])},
    "gcp-win10": {"gvnic": ("gvnic", "1.2.0", ["gvnic.sys", "gvnic.inf"])},
    "nutanix-win11": {"vioscsi": ("vioscsi", "100.95.104.26200", ["vioscsi.sys", "vioscsi.inf", "vioscsi.cat"]),
                      "netkvm": ("netkvm", "100.95.104.26200", ["netkvm.sys", "netkvm.inf", "netkvm.cat"])},
}


# ---------------------------------------------------------------- the tests

@pytest.mark.parametrize("case", [c for c, spec in CASES.items() if spec[3]])
def test_dry_run_changes_nothing_and_lists_what_the_run_did(runs, case):
    run = runs["runs"][case]
    assert run["dryRunUnchanged"]
    assert run["plan"]["changes"] == [o["change"] for o in run["result"]["outcomes"]]
    assert run["plan"]["warnings"] == run["result"]["warnings"]


@pytest.mark.parametrize("case", CASES)
def test_run_applies_everything_and_a_second_run_plans_nothing(runs, case):
    run = runs["runs"][case]
    assert run["result"]["error"] is None
    assert {o["status"] for o in run["result"]["outcomes"]} == {"applied"}
    assert run["replan"]["changes"] == []
    assert {w["code"] for w in run["result"]["warnings"]} == WARNINGS[case]


@pytest.mark.parametrize("case", CASES)
def test_registry_values_are_exact_in_hivex_and_regipy(runs, case):
    assert_values(runs["back"][case], EXPECTED[case])


@pytest.mark.parametrize("case", CASES)
def test_every_reported_registry_change_is_in_the_image(runs, case):
    back = runs["back"][case]
    for outcome in runs["runs"][case]["result"]["outcomes"]:
        change = outcome["change"]
        if change["kind"] == "registry_set":
            rtype = RegType[change["new"]["type"].removeprefix("REG_")]
            data = bytes.fromhex(change["new"]["value"]) if rtype == RegType.BINARY else change["new"]["value"]
            assert_value(back, change["hive"], change["key"], change["name"], rtype, data)
        elif change["kind"] == "registry_delete_value":
            assert hivex_value(back["hives"][change["hive"]], change["key"], change["name"]) is None


@pytest.mark.parametrize("case", CASES)
def test_only_the_current_control_set_is_touched(runs, case):
    ccs = CCS[CASES[case][0]]
    for outcome in runs["runs"][case]["result"]["outcomes"]:
        change = outcome["change"]
        if change["kind"].startswith("registry") and change["hive"] == "SYSTEM":
            assert change["key"].split("\\")[0] in (ccs, "DriverDatabase", "Setup"), change["key"]
    if ccs != "ControlSet001":                       # the stale set keeps its values
        back = runs["back"][case]["hives"]["SYSTEM"]
        assert hivex_value(back, r"ControlSet001\Control\CrashControl", "AutoReboot") == (RegType.DWORD, 1)
        assert hivex_value(back, r"ControlSet001\Services\partmgr\Parameters", "SanPolicy") is None


@pytest.mark.parametrize("case", CASES)
def test_first_boot_actions_are_the_shipped_scripts_with_plain_data(runs, case):
    files = runs["back"][case]["files"]
    base = r"C:\Windows\Setup\ce-firstboot"
    plan = json.loads(files[base + r"\plan.json"])
    actions = {a["name"]: a for a in plan["actions"]}
    assert {n: json.loads(files[rf"{base}\actions\{a['id']}.json"]) for n, a in actions.items()} == ACTIONS[case]
    assert all((a["retries"], a["required"]) == (2, False) for a in actions.values())
    for action in actions.values():
        assert files[rf"{base}\actions\{action['script']}"] == script_text(action["script"])
    assert_value(runs["back"][case], "SYSTEM", "Setup", "SetupType", RegType.DWORD, 2)


@pytest.mark.parametrize("case", CASES)
def test_driver_files_come_verbatim_from_the_newest_payload(runs, case):
    files = runs["back"][case]["files"]
    store = runs["store"]
    copied = COPIED.get(case, {})
    for service, (folder, version, names) in copied.items():
        sys_name = names[0]
        assert files[rf"C:\Windows\System32\drivers\{sys_name}"] == driver_bytes(sys_name, version)
        for name in names:
            assert files[rf"C:\Windows\Drivers\ce\{folder}\{name}"] == (store / name).read_bytes()
    packaged = sorted(p for p in files if p.startswith(r"C:\Windows\Drivers\ce" + "\\"))
    assert packaged == sorted(rf"C:\Windows\Drivers\ce\{f}\{n}" for f, _, names in copied.values() for n in names)
    assert r"C:\Windows\System32\drivers\AWSNVMe_1.4.sys" not in files


def test_a_disabled_filter_leaves_the_class_filter_lists(runs):
    back = runs["back"]["vsphere-win2022"]["hives"]["SYSTEM"]
    assert hivex_value(back, rf"ControlSet001\Control\Class\{HDC_CLASS}", "UpperFilters") is None
    assert regipy_value(back, rf"ControlSet001\Control\Class\{HDC_CLASS}", "UpperFilters") is None


def test_missing_boot_driver_is_a_clear_error_and_nothing_is_written(runs):
    proc = runs["failed"]["proc"]
    assert proc.returncode == 1
    assert "error [driver_missing]: targetPlatform nutanix boots from vioscsi" in proc.stderr
    assert "add driver/vioscsi (amd64) to the payload store" in proc.stderr
    failed, pristine = runs["back"]["failed"], runs["back"]["pristine"]
    for hive in ("SYSTEM", "SOFTWARE"):
        assert sha256_file(failed["hives"][hive]) == sha256_file(pristine["hives"][hive])
    assert failed["files"] == pristine["files"]


def test_every_setting_cites_a_source_and_every_platform_is_covered():
    data = rules()
    assert set(data["platforms"]) == {"azure", "aws", "gcp", "vsphere", "xenserver", "nutanix"}
    assert {spec[1] for spec in CASES.values()} == set(data["platforms"])
    assert len({spec[0] for spec in CASES.values() if spec[1] == "azure"}) == 5
    sources = data["sources"]
    assert all(s["url"].startswith("https://") and s["title"] for s in sources.values())
    for platform in data["platforms"].values():
        for item in platform["drivers"] + platform["services"] + platform["registry"]:
            assert item["source"] in sources
        assert platform["agent"]["source"] in sources
        if platform["cloud"]:
            assert platform["rtc_utc_source"] in sources
    assert all(t["source"] in sources for name, t in data["tools"].items() if not name.startswith("_"))


def test_unknown_platform_is_refused_before_launching(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {"provisioningType": "Mcs", "targetPlatform": "hyperv"}}))
    proc = ce("plan", "--job", str(job), str(tmp_path / "missing.qcow2"))
    assert proc.returncode == 1 and "error [invalid_job]" in proc.stderr and "targetPlatform" in proc.stderr


def test_a_swapped_driver_payload_is_an_error_even_where_the_driver_is_optional(samples, tmp_path):
    """storflt is optional on azure (a warning when absent), but a store that has it with the wrong bytes is
    refused: a tampered driver must never reach a boot path."""
    store = make_store(tmp_path / "store")
    (store / "storflt.sys").write_bytes(driver_bytes("storflt.sys", "tampered"))
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {"provisioningType": "Mcs", "targetPlatform": "azure",
                                                             "payloads": str(store)}}))
    path = samples["win2016-vda1912"].path
    before = sha256_file(path)
    proc = ce("plan", "--job", str(job), str(path))
    assert proc.returncode == 1, proc.stdout
    assert "error [payload_mismatch]" in proc.stderr and "storflt.sys" in proc.stderr
    assert "starting the appliance" not in proc.stderr          # a size that differs: refused before the launch
    assert sha256_file(path) == before
