"""targetPlatform: make the image boot and be reachable on azure | aws | gcp | vsphere | xenserver | nutanix.

Everything comes from ``ce/data/platforms.json``, where each setting cites the platform document it is taken
from: the boot-critical storage and network driver services at the start type the platform needs (copied from
the payload store, with the keys PnP needs to bind them at boot, when the image lacks them), other hypervisors'
tools disabled offline and removed at first boot, RDP on, SAN policy OnlineAll, RTC in UTC on clouds, AutoReboot
off after a stop error, and what a platform's own preparation guide adds. Every key is written in the *current*
control set.
"""
from __future__ import annotations

import json
import re
import uuid
from importlib import resources

from ce.errors import DriverMissing, PayloadMissing, WindowsTooOld
from ce.firstboot import SAFE_PARAM
from ce.payloads import PARAM, Payload, PayloadStore, about
from ce.changes.guest import type_from_name
from ce.plan import Planner
from ce.registry import RegType
from ce.windows import detection_rules, uninstall_keys

ARCH = {"x86_64": "amd64", "i386": "x86", "aarch64": "arm64"}
CLASS_GUID = {"scsi": "{4D36E97B-E325-11CE-BFC1-08002BE10318}", "net": "{4D36E972-E325-11CE-BFC1-08002BE10318}"}
FIRST_DRIVER_DATABASE_BUILD = 9200          # Windows 8 / Server 2012 replaced CriticalDeviceDatabase
SERVICE_KERNEL_DRIVER, ERROR_NORMAL, DISABLED = 1, 1, 4
RDP_RULE_PREFIX = "RemoteDesktop-"
DEVICE_PATH_KEY = r"Microsoft\Windows\CurrentVersion"
RDP_POLICY_KEY = r"Policies\Microsoft\Windows NT\Terminal Services"


def rules() -> dict:
    return json.loads(resources.files("ce").joinpath("data/platforms.json").read_text())


def cite(data: dict, key: str) -> str:
    source = data["sources"][key]
    return f"{source['title']} <{source['url']}>"


class PlatformPlan:
    """The planning context of one targetPlatform: the planner, the facts, the platform's rules."""

    def __init__(self, planner: Planner, facts, platform: str, store_for):
        self.planner, self.facts, self.platform, self.store_for = planner, facts, platform, store_for
        self.data = rules()
        self.spec = self.data["platforms"][platform]
        self.ccs = facts.os.current_control_set
        self.windows = "C:" + planner.root.systemroot.replace("/", "\\")
        self.system = planner.hive("SYSTEM")

    def why(self, what: str, source: str) -> str:
        return f"targetPlatform {self.platform}: {what} — {cite(self.data, source)}"

    def service_key(self, name: str) -> str:
        return rf"{self.ccs}\Services\{name}"


def plan_platform(planner: Planner, facts, platform: str, store_for, extra_drivers: list[dict] = ()) -> None:
    """``store_for()`` opens the payload store, or returns None when none is configured (drivers the image lacks
    are then missing: an error or a warning per platform). ``extra_drivers`` are boot drivers something else
    needs on this platform (ceVmSku's NVMe driver), each naming who needs it (``needed_by``) and why (``cite``)."""
    ctx = PlatformPlan(planner, facts, platform, store_for)
    ctx.spec["drivers"] = [*ctx.spec["drivers"], *extra_drivers]
    installed = plan_drivers(ctx)
    if installed:
        plan_driver_packages(ctx, installed)
    plan_tools(ctx)
    plan_rdp(ctx)
    plan_boot_hygiene(ctx)
    plan_services(ctx)
    plan_registry(ctx)
    warn_agent(ctx)


# ---------------------------------------------------------------- drivers

def plan_drivers(ctx: PlatformPlan) -> list[tuple[dict, list[Payload]]]:
    """Start types of the drivers the platform boots with; returns the drivers installed from payloads."""
    installed = []
    for driver in ctx.spec["drivers"]:
        key = ctx.service_key(driver["service"])
        has_key = ctx.system.key_exists(key)
        has_file = ctx.planner.guest.exists(driver_file_path(ctx, driver))
        why = driver_why(ctx, driver)
        if has_key and has_file:
            ctx.planner.set("SYSTEM", key, "Start", RegType.DWORD, driver["start"], reason=why)
        elif driver.get("if_present"):
            continue
        elif has_file:
            plan_service(ctx, driver, why)
        else:
            payloads = driver_payloads(ctx, driver)
            if payloads:
                install_driver(ctx, driver, payloads, why)
                installed.append((driver, payloads))
    return installed


def driver_why(ctx: PlatformPlan, driver: dict) -> str:
    what = f"{driver['service']} Start={driver['start']}"
    if "needed_by" in driver:
        return f"{driver['needed_by']}: {what} — {driver['cite']}"
    return ctx.why(what, driver["source"])


def needer(ctx: PlatformPlan, driver: dict) -> str:
    return driver.get("needed_by", f"targetPlatform {ctx.platform}")


def driver_file_path(ctx: PlatformPlan, driver: dict) -> str:
    return rf"{ctx.windows}\System32\drivers\{driver['file']}"


def driver_payloads(ctx: PlatformPlan, driver: dict) -> list[Payload]:
    """The newest payload of ``driver/<service>`` for the image's architecture, verified; [] (with a warning)
    when it is not to be had and the platform can boot without it, a clear error when it cannot. A payload
    that is there but corrupt is always an error."""
    component = f"driver/{driver['service'].lower()}"
    arch = ARCH.get(ctx.facts.os.arch, ctx.facts.os.arch)
    store = ctx.store_for()
    try:
        if store is None:
            raise PayloadMissing("no payload store is configured (params.payloads or CE_PAYLOADS)")
        files = newest_of(store.find(component, arch=arch))
        newest = files[0].version
        if not any(p.file.lower() == driver["file"].lower() for p in files):
            raise PayloadMissing(f"payload store {store.root}: {component} {newest} has no {driver['file']}")
    except PayloadMissing as exc:
        lacks = (f"the image has no {driver['service']} driver (System32\\drivers\\{driver['file']} or its "
                 f"service key) and {exc.message}")
        if driver.get("missing") == "error":
            raise DriverMissing(f"{needer(ctx, driver)} boots from {driver['service']}: {lacks}; add "
                                f"{component} ({arch}) to the payload store") from None
        ctx.planner.warn("driver_missing", f"{needer(ctx, driver)}: {lacks}; the image can still boot, "
                         f"but without {driver['service']}")
        return []
    for payload in files:
        store.verified(payload)
    return files


def newest_of(found: list[Payload]) -> list[Payload]:
    newest = max({p.version for p in found}, key=version_key)
    return [p for p in found if p.version == newest]


def check_driver_payloads(store: PayloadStore, platform: str, extra_services: list[str]) -> None:
    """Before the launch: every driver payload the platform could copy (for each of its drivers, the newest version
    of each architecture: the image decides which, and whether it needs any) is in the store at its manifest size."""
    services = [d["service"] for d in rules()["platforms"][platform]["drivers"] if not d.get("if_present")]
    for service in [*services, *extra_services]:
        found = [p for p in store.payloads if p.component == f"driver/{service.lower()}"]
        for arch in {p.arch for p in found}:
            for payload in newest_of([p for p in found if p.arch == arch]):
                with about(PARAM):
                    store.present(payload)


def version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in re.split(r"[.-]", version))


def plan_service(ctx: PlatformPlan, driver: dict, why: str) -> None:
    """The service values a kernel driver needs to be loaded at the platform's start type."""
    key = ctx.service_key(driver["service"])
    set_ = ctx.planner.set
    set_("SYSTEM", key, "Type", RegType.DWORD, SERVICE_KERNEL_DRIVER, reason=why)
    set_("SYSTEM", key, "Start", RegType.DWORD, driver["start"], reason=why)
    set_("SYSTEM", key, "ErrorControl", RegType.DWORD, ERROR_NORMAL, reason=why)
    set_("SYSTEM", key, "Group", RegType.SZ, driver["group"], reason=why)
    set_("SYSTEM", key, "ImagePath", RegType.EXPAND_SZ, rf"System32\drivers\{driver['file']}", reason=why)


def install_driver(ctx: PlatformPlan, driver: dict, payloads: list[Payload], why: str) -> None:
    folder = package_folder(ctx, driver)
    for payload in payloads:
        source = payload.path
        digest = f"{payload.describe()}, sha256 {payload.sha256[:12]}… checked against the payload manifest"
        if payload.file.lower() == driver["file"].lower():
            ctx.planner.write_file(driver_file_path(ctx, driver), source, reason=f"{why} ({digest})")
        ctx.planner.write_file(rf"{folder}\{payload.file}", source, reason=f"driver package ({digest})")
    plan_service(ctx, driver, why)
    if not driver.get("pci"):
        return
    if ctx.facts.os.build < FIRST_DRIVER_DATABASE_BUILD:
        # Older Windows binds boot devices through CriticalDeviceDatabase instead; no supported VDA runs there.
        raise WindowsTooOld(f"targetPlatform {ctx.platform}: binding {driver['service']} at boot needs Windows 8 / "
                            f"Server 2012 or newer (build {FIRST_DRIVER_DATABASE_BUILD}+); this image is build "
                            f"{ctx.facts.os.build}")
    plan_driver_database(ctx, driver, driver["pci"], why)


def package_folder(ctx: PlatformPlan, driver: dict) -> str:
    return rf"{ctx.windows}\{ctx.data['common']['driver_packages']['folder']}\{driver['service'].lower()}"


def plan_driver_database(ctx: PlatformPlan, driver: dict, pci_ids: list[str], why: str) -> None:
    """Windows 8+ binds a boot device through SYSTEM\\DriverDatabase (the hive root, not a control set): an INF
    record, a driver package whose configuration names the service, and each hardware ID pointing at both."""
    service = driver["service"]
    inf, label, config = f"ce-{service.lower()}.inf", f"ce-{service.lower()}.inf_ce", f"ce_{service.lower()}"
    ddb, set_ = "DriverDatabase", ctx.planner.set
    why = f"{why}; binds PCI\\{', '.join(pci_ids)} at boot (Windows 8+ DriverDatabase, {cite(ctx.data, 'V2V')})"
    set_("SYSTEM", rf"{ddb}\DriverInfFiles\{inf}", "", RegType.MULTI_SZ, [label], reason=why)
    set_("SYSTEM", rf"{ddb}\DriverInfFiles\{inf}", "Active", RegType.SZ, label, reason=why)
    set_("SYSTEM", rf"{ddb}\DriverInfFiles\{inf}", "Configurations", RegType.MULTI_SZ, [config], reason=why)
    package = rf"{ddb}\DriverPackages\{label}"
    set_("SYSTEM", package, "Version", RegType.BINARY, package_version(driver), reason=why)
    set_("SYSTEM", rf"{package}\Configurations\{config}", "ConfigFlags", RegType.DWORD, 0, reason=why)
    set_("SYSTEM", rf"{package}\Configurations\{config}", "Service", RegType.SZ, service, reason=why)
    for pci_id in pci_ids:
        set_("SYSTEM", rf"{ddb}\DeviceIds\PCI\{pci_id}", inf, RegType.BINARY, bytes([1, 0xFF, 0, 0]), reason=why)
        set_("SYSTEM", rf"{package}\Descriptors\PCI\{pci_id}", "Configuration", RegType.SZ, config, reason=why)


def package_version(driver: dict) -> bytes:
    """DriverPackages Version: an 8-byte header, the device class GUID (binary, little-endian fields), 24 zero
    bytes; Windows 10's kernel PnP refuses a package without it."""
    return bytes([0, 0xFF, 9, 0, 0, 0, 0, 0]) + uuid.UUID(CLASS_GUID[driver["class"]]).bytes_le + bytes(24)


def plan_driver_packages(ctx: PlatformPlan, installed: list[tuple[dict, list[Payload]]]) -> None:
    """PnP finds the copied packages through DevicePath; pnputil installs them properly at first boot."""
    common = ctx.data["common"]["driver_packages"]
    entry = rf"%SystemRoot%\{common['folder']}"
    software = ctx.planner.hive("SOFTWARE")
    current = software.get(DEVICE_PATH_KEY, "DevicePath")
    paths = str(current.data).split(";") if current and current.data else [r"%SystemRoot%\inf"]
    if entry.lower() not in (p.lower() for p in paths):
        rtype = current.type if current else RegType.EXPAND_SZ
        ctx.planner.set("SOFTWARE", DEVICE_PATH_KEY, "DevicePath", rtype, ";".join(paths + [entry]),
                        reason=f"targetPlatform {ctx.platform}: let PnP find the driver packages ce copied — "
                               f"{cite(ctx.data, common['source'])}")
    with_inf = [d["service"].lower() for d, files in installed if any(p.file.lower().endswith(".inf") for p in files)]
    if with_inf:
        ctx.planner.first_boot("platform-drivers", "platform-install-drivers.ps1", {"packages": with_inf},
                               retries=2, required=False, timeout=900,
                               reason=f"pnputil /add-driver /install for {', '.join(with_inf)}")


# ---------------------------------------------------------------- other hypervisors' tools

def plan_tools(ctx: PlatformPlan) -> None:
    tools = ctx.data["tools"]
    kept = set(ctx.spec["keep"])
    keep_services = {s.lower() for t in kept for s in tools.get(t, {}).get("services", [])}
    keep_services |= {d["service"].lower() for d in ctx.spec["drivers"]}
    disabled: set[str] = set()                 # a driver can belong to two tool families (virtio, nutanix)
    for tool in ctx.facts.tools:
        if tool.name in kept or tool.name not in tools:
            continue
        rule = tools[tool.name]
        why = ctx.why(f"{tool.display_name or tool.name} does not belong on {ctx.platform}: disabled",
                      rule["source"])
        for service in rule["services"]:
            if service.lower() in keep_services | disabled or not ctx.system.key_exists(ctx.service_key(service)):
                continue
            ctx.planner.set("SYSTEM", ctx.service_key(service), "Start", RegType.DWORD, DISABLED, reason=why)
            disabled.add(service.lower())
        plan_removal(ctx, tool)
    if disabled:
        strip_class_filters(ctx, disabled)


def plan_removal(ctx: PlatformPlan, tool) -> None:
    """One optional first-boot uninstall per Add/Remove Programs entry of the tool."""
    patterns = detection_rules()["tools"].get(tool.name, {}).get("display_name", [])
    for view, key, name, _ in uninstall_keys(ctx.planner.hive("SOFTWARE")):
        if not any(re.search(p, name) for p in patterns):
            continue
        if not SAFE_PARAM.match(key):
            ctx.planner.warn("tool_not_removed", f"{name}: uninstall key {key!r} has characters ce never "
                             f"stages; remove it by hand (its services are disabled)")
            continue
        ctx.planner.first_boot(f"remove-{tool.name}", "remove-program.ps1",
                               {"uninstall_key": key, "wow64": view.startswith("WOW6432Node")},
                               retries=2, required=False, timeout=1800,
                               reason=f"uninstall {name} (not needed on {ctx.platform})")


def strip_class_filters(ctx: PlatformPlan, disabled: set[str]) -> None:
    """A disabled filter driver left in a device class's Upper/LowerFilters stops that class from starting
    (the disk class: no boot); virt-v2v strips them the same way."""
    classes = rf"{ctx.ccs}\Control\Class"
    if not ctx.system.key_exists(classes):
        return
    for guid in ctx.system.subkeys(classes):
        for name in ("UpperFilters", "LowerFilters"):
            value = ctx.system.get(rf"{classes}\{guid}", name)
            if value is None or value.type != RegType.MULTI_SZ:
                continue
            kept = [f for f in value.data if f.lower() not in disabled]
            if kept == value.data:
                continue
            why = f"targetPlatform {ctx.platform}: a disabled filter must not stay in the class filters"
            if kept:
                ctx.planner.set("SYSTEM", rf"{classes}\{guid}", name, RegType.MULTI_SZ, kept, reason=why)
            else:
                ctx.planner.delete_value("SYSTEM", rf"{classes}\{guid}", name, reason=why)


# ---------------------------------------------------------------- RDP, SAN, time, crash

def plan_rdp(ctx: PlatformPlan) -> None:
    rdp = ctx.data["common"]["rdp"]
    why = ctx.why("Remote Desktop enabled", rdp["source"])
    ctx.planner.set("SYSTEM", rf"{ctx.ccs}\Control\Terminal Server", "fDenyTSConnections", RegType.DWORD,
                    rdp["deny_value"], reason=why)
    policy = ctx.planner.hive("SOFTWARE").get(RDP_POLICY_KEY, "fDenyTSConnections")
    if policy is not None:
        ctx.planner.set("SOFTWARE", RDP_POLICY_KEY, "fDenyTSConnections", RegType.DWORD, rdp["deny_value"],
                        reason=why + " (the policy copy outranks the local value)")
    plan_rdp_firewall(ctx, rdp)


def plan_rdp_firewall(ctx: PlatformPlan, rdp: dict) -> None:
    """Enable the Remote Desktop inbound rules offline when the image has them; otherwise at first boot."""
    key = rf"{ctx.ccs}\Services\SharedAccess\Parameters\FirewallPolicy\FirewallRules"
    rules_ = ctx.system.values(key) if ctx.system.key_exists(key) else {}
    found = {n: v for n, v in rules_.items() if n.startswith(RDP_RULE_PREFIX) and "|Dir=In|" in str(v.data)}
    why = ctx.why("Remote Desktop inbound firewall rules enabled", rdp["firewall_source"])
    for name, value in found.items():
        if value.type in (RegType.SZ, RegType.EXPAND_SZ):
            ctx.planner.set("SYSTEM", key, name, value.type, value.data.replace("|Active=FALSE|", "|Active=TRUE|"),
                            reason=why)
    if not found:
        ctx.planner.first_boot("platform-rdp-firewall", "platform-enable-rdp.ps1", {}, retries=2, required=False,
                               timeout=300, reason=why + " (no rule found offline)")


def plan_boot_hygiene(ctx: PlatformPlan) -> None:
    common, ccs = ctx.data["common"], ctx.ccs
    ctx.planner.set("SYSTEM", rf"{ccs}\Services\partmgr\Parameters", "SanPolicy", RegType.DWORD,
                    common["san_policy"]["value"], reason=ctx.why("SAN policy OnlineAll: every disk comes online",
                                                                  common["san_policy"]["source"]))
    crash = common["crash_auto_reboot"]
    ctx.planner.set("SYSTEM", rf"{ccs}\Control\CrashControl", "AutoReboot", RegType.DWORD, crash["value"],
                    reason=ctx.why(f"no automatic reboot after a stop error: {crash['why']}", crash["source"]))
    if ctx.spec["cloud"]:
        ctx.planner.set("SYSTEM", rf"{ccs}\Control\TimeZoneInformation", "RealTimeIsUniversal", RegType.DWORD, 1,
                        reason=ctx.why("the hardware clock is UTC", ctx.spec["rtc_utc_source"]))


# ---------------------------------------------------------------- the platform guide's own settings

def plan_services(ctx: PlatformPlan) -> None:
    missing = []
    for group in ctx.spec["services"]:
        for name in group["names"]:
            key = ctx.service_key(name)
            if ctx.system.key_exists(key):
                ctx.planner.set("SYSTEM", key, "Start", RegType.DWORD, group["start"],
                                reason=ctx.why(f"{name} Start={group['start']}", group["source"]))
            else:
                missing.append(name)
    if missing:
        ctx.planner.warn("service_missing", f"targetPlatform {ctx.platform}: the platform guide sets the start "
                         f"type of {', '.join(missing)}, which the image does not have; left alone")


def plan_registry(ctx: PlatformPlan) -> None:
    for item in ctx.spec["registry"]:
        key = item["key"].replace("{ccs}", ctx.ccs)
        why = ctx.why(f"{item['name']}", item["source"])
        if item.get("delete"):
            ctx.planner.delete_value(item["hive"], key, item["name"], reason=why)
        else:
            ctx.planner.set(item["hive"], key, item["name"], type_from_name(item["type"]), item["data"], reason=why)


def warn_agent(ctx: PlatformPlan) -> None:
    agent = ctx.spec["agent"]
    detected = {t.name for t in ctx.facts.tools}
    if agent["tool"] in detected or any(ctx.system.key_exists(ctx.service_key(s)) for s in agent["services"]):
        return
    ctx.planner.warn("platform_agent_missing", f"targetPlatform {ctx.platform}: {agent['name']} is not in the "
                     f"image; install it after the first boot there — {cite(ctx.data, agent['source'])}")
