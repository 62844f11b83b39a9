"""Reading a Windows disk's facts from a launched guest: the partition table, the filesystems, and the SYSTEM,
SOFTWARE and SECURITY hives (hivex).

Read-only by construction: the Windows volume is mounted read-only (and ``inspect_path`` adds the drive
read-only, so libguestfs puts a throwaway overlay in front of it). Facts come from the registry and the partition
table, never from guesses; each detected component lists the evidence it was recognised by, following the rules
in ``ce/data/detection.json``.
"""
from __future__ import annotations

import json
import re
import struct
import tempfile
from importlib import resources
from pathlib import Path

from ce import disks, firstboot, registry
from ce.errors import HibernatedVolume, HiveDirty, HiveMissing, UncleanVolume
from ce.guest import Drive, Guest, WindowsRoot
from ce.changes import StepWarning
from ce.plan import hive_path

from .boot import ThisDisk, esp_of, read_boot
from .facts import DiskFacts, Detected, DomainFacts, InspectReport, OsFacts, StateFacts, VdaFacts

USER_FORMATS = {qemu: user for user, qemu in disks.DISK_FORMATS.items()}     # "vpc" -> "vhd"
CURRENT_VERSION = r"Microsoft\Windows NT\CurrentVersion"
UNINSTALL_VIEWS = (r"Microsoft\Windows\CurrentVersion\Uninstall",
                   r"WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall")
VDA_KEY = r"Citrix\VirtualDesktopAgent"
VDA_POLICY_KEY = r"Policies\Citrix\VirtualDesktopAgent"
PENDING_UNJOIN_KEY = r"Citrix\ImagePortability"      # prepare's domainUnjoin marks the image here


def detection_rules() -> dict:
    return json.loads(resources.files("ce").joinpath("data/detection.json").read_text())


# ---------------------------------------------------------------- entry points

def inspect_path(path: str, root: str | None = None, progress=lambda percent, message: None) -> InspectReport:
    """Open the disk file or device ``path`` read-only in its own appliance and inspect it; ``progress(percent,
    message)`` hears each phase (the appliance's start-up is most of the time)."""
    progress(1, "reading the disk's format")
    info = disks.info(path)
    progress(3, "starting the appliance")
    with Guest([Drive(path, info.format, readonly=True)]) as guest:
        return inspect_guest(guest, info, root, progress=progress, band=(60, 99))


def inspect_guest(guest: Guest, info: disks.DiskInfo, root: str | None = None, device: str | None = None, *,
                  progress=lambda percent, message: None, band: tuple[float, float] = (0, 0)) -> InspectReport:
    """Inspect the drive ``device`` of a launched guest (default: its first drive); its phases are reported
    through ``progress`` within ``band`` percent."""
    low, high = band
    progress(low, "reading the partitions and filesystems")
    device = device or guest.devices()[0]
    filesystems = guest.filesystems(device)
    table = guest.partition_table(device)
    win = guest.windows_root(root, device)
    guest.mount_windows(win, readonly=True)
    warnings: list[StepWarning] = []
    hives: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="ce-inspect-") as tmp:
            progress(low + (high - low) / 3, "reading the registry hives")
            hives, dirty = load_hives(guest, win, Path(tmp), warnings)
            report = build_report(info, win, filesystems, table, hives, dirty, warnings)
            report.first_boot = firstboot.read_status(guest, win.systemroot,
                                                      hives["SYSTEM"].get_data("Setup", "CmdLine"))
            progress(low + (high - low) * 2 / 3, "reading the boot configuration")
            disk = ThisDisk(table=table, disk_id=guest.disk_id(device), partitions=tuple(filesystems))
            report.boot, boot_warnings = read_boot(guest, device, disk, report.firmware, win.device, Path(tmp))
            report.warnings.extend(boot_warnings)
            return report
    finally:
        for hive in hives.values():
            hive.close()
        guest.unmount_all()


def load_hives(guest: Guest, win: WindowsRoot, tmp: Path, warnings: list[StepWarning]) -> tuple[dict, list[str]]:
    """Download and open SYSTEM, SOFTWARE and SECURITY. A dirty hive is read as it is on disk, with a warning."""
    hives, dirty = {}, []
    for name in ("SYSTEM", "SOFTWARE", "SECURITY"):
        guest_path = hive_path(guest, win, name)
        if name == "SECURITY" and not guest.path_exists(guest_path):
            warnings.append(StepWarning(code=HiveMissing.code, message="no SECURITY hive: domain membership unknown"))
            continue
        label = f"{win.device}:{guest_path}"
        local = registry.download_hive(guest, guest_path, tmp)
        try:
            registry.check_header(local, label)
        except HiveDirty as exc:
            dirty.append(name)
            warnings.append(StepWarning(code=exc.code, message=exc.message))
        try:
            hives[name] = registry.Hive.open(local, allow_dirty=True, label=label)
        except Exception:
            for hive in hives.values():
                hive.close()
            raise
    return hives, dirty


def build_report(info, win: WindowsRoot, filesystems, table, hives, dirty, warnings) -> InspectReport:
    rules = detection_rules()
    system, software = hives["SYSTEM"], hives["SOFTWARE"]
    ccs = registry.current_control_set(system)
    firmware = detect_firmware(table, filesystems)
    root_fs = next(fs for fs in filesystems if fs.device == win.device)
    state = StateFacts(hibernated=root_fs.ntfs_state == "hibernated",
                       unclean=root_fs.ntfs_state in ("unclean", "dirty"),
                       bitlocker=any(fs.bitlocker for fs in filesystems), dirty_hives=dirty)
    warnings.extend(state_warnings(state, win.device))
    services = service_names(system, ccs)
    arp = uninstall_entries(software)
    components = {name: detect(name, rule, arp, services, software)
                  for name, rule in rules["components"].items()}
    tools = [d for name, rule in rules["tools"].items() if (d := detect(name, rule, arp, services, software))]
    return InspectReport(
        disk=DiskFacts(path=info.path, format=USER_FORMATS.get(info.format, info.format), subformat=info.subformat,
                       virtual_size=info.virtual_size, actual_size=info.actual_size, partition_table=table,
                       firmware=firmware, filesystems=[fs.to_json() for fs in filesystems]),
        firmware=firmware, partition_table=table,
        os=os_facts(software, system, ccs, win, rules),
        domain=domain_facts(hives.get("SECURITY"), system, ccs).model_copy(update={"pending_unjoin": str(
            software.get_data(PENDING_UNJOIN_KEY, "PendingDomainUnjoin", ""))}),
        vda=vda_facts(software, components.get("vda"), rules),
        components=components, tools=tools, state=state, warnings=warnings)


# ---------------------------------------------------------------- facts

def detect_firmware(table: str, filesystems) -> str:
    """UEFI boots from an EFI system partition (on GPT, or type 0xEF on MBR); BIOS from an MBR disk. Windows on GPT
    without an ESP boots neither way."""
    if esp_of(filesystems):
        return "uefi"
    return "bios" if table == "mbr" else "unknown"


def state_warnings(state: StateFacts, device: str) -> list[StepWarning]:
    """A volume prepare would refuse to write is still inspected: the refusal becomes a warning, same code."""
    out = []
    if state.hibernated:
        out.append(StepWarning(code=HibernatedVolume.code, message=f"{device} is hibernated (Fast Startup): it can "
                               f"be inspected but not prepared; boot Windows and shut down fully first"))
    if state.unclean:
        out.append(StepWarning(code=UncleanVolume.code, message=f"{device} was not shut down cleanly (a crash, or a "
                               f"snapshot of a running VM): it can be inspected but not prepared; boot Windows once "
                               f"(or run chkdsk /f) and shut down normally first"))
    return out


def os_facts(software, system, ccs: str, win: WindowsRoot, rules: dict) -> OsFacts:
    get = software.get_data
    build = int(get(CURRENT_VERSION, "CurrentBuildNumber") or get(CURRENT_VERSION, "CurrentBuild") or 0)
    major = get(CURRENT_VERSION, "CurrentMajorVersionNumber")
    minor = get(CURRENT_VERSION, "CurrentMinorVersionNumber")
    if major is None:
        major, minor = (int(x) for x in (get(CURRENT_VERSION, "CurrentVersion") or "0.0").split(".")[:2])
    ubr = get(CURRENT_VERSION, "UBR") or 0
    installation_type = get(CURRENT_VERSION, "InstallationType") or ""
    product_name = get(CURRENT_VERSION, "ProductName") or ""
    tcpip = rf"{ccs}\Services\Tcpip\Parameters"
    return OsFacts(
        product_name=product_name,
        product=product_family(product_name, installation_type, build, rules),
        edition=get(CURRENT_VERSION, "EditionID") or "",
        build=build, ubr=ubr, version=f"{major}.{minor}.{build}.{ubr}",
        release=get(CURRENT_VERSION, "DisplayVersion") or get(CURRENT_VERSION, "ReleaseId") or "",
        arch=win.arch, installation_type=installation_type,
        hostname=system.get_data(tcpip, "Hostname") or "",
        computer_name=system.get_data(rf"{ccs}\Control\ComputerName\ComputerName", "ComputerName") or "",
        current_control_set=ccs, systemroot=win.systemroot, root_device=win.device)


def product_family(product_name: str, installation_type: str, build: int, rules: dict) -> str:
    """"Windows Server 2019", "Windows 11", ...: from the build, because Windows 11 still says "Windows 10"."""
    if installation_type.startswith("Server"):
        return rules["windows_server_releases"].get(str(build)) or re.sub(r" (Standard|Datacenter).*$", "",
                                                                          product_name)
    if installation_type == "Client" and product_name.startswith("Windows 1"):
        return "Windows 11" if build >= rules["windows_client_first_win11_build"] else "Windows 10"
    return product_name


def lsa_string(blob: bytes | None) -> str:
    """Decode an LSA policy UNICODE_STRING blob (x64: offset at byte 8; x86: offset at byte 4)."""
    if not blob or len(blob) < 8:
        return ""
    length = struct.unpack_from("<H", blob)[0]
    for offset in (struct.unpack_from("<Q", blob, 8)[0] if len(blob) >= 16 else None,
                   struct.unpack_from("<I", blob, 4)[0]):
        if offset is not None and 8 <= offset and offset + length <= len(blob):
            return blob[offset:offset + length].decode("utf-16-le", errors="replace")
    return ""


def domain_facts(security, system, ccs: str) -> DomainFacts:
    if security is None:
        dns = system.get_data(rf"{ccs}\Services\Tcpip\Parameters", "Domain") or ""
        return DomainFacts(joined=bool(dns), netbios="", dns=dns)
    netbios = lsa_string(security.get_data(r"Policy\PolPrDmN", ""))
    sid = security.get_data(r"Policy\PolPrDmS", "") or b""
    dns = lsa_string(security.get_data(r"Policy\PolDnDDN", ""))
    return DomainFacts(joined=len(sid) > 8, netbios=netbios, dns=dns)


def parse_ddcs(text: str | None) -> list[str]:
    """ListOfDDCs: space separated FQDNs, optionally in parenthesised groups; commas are tolerated."""
    return [t for t in re.split(r"[\s,()]+", text or "") if t]


def vda_facts(software, vda: Detected | None, rules: dict) -> VdaFacts:
    if vda is None:
        return VdaFacts(installed=False)
    version = vda.version or software.get_data(VDA_KEY, "ProductVersion") or ""
    release = vda_release(version)
    local = parse_ddcs(software.get_data(VDA_KEY, "ListOfDDCs"))
    policy = parse_ddcs(software.get_data(VDA_POLICY_KEY, "ListOfDDCs"))
    farm_guid = software.get_data(VDA_KEY, "FarmGUID") or ""
    # Policy outranks the local value; an explicit list outranks AD (FarmGUID) discovery.
    if policy:
        controllers, source = policy, "policy"
    elif local:
        controllers, source = local, "registry"
    else:
        controllers, source = [], "ad_site_guid" if farm_guid else "none"
    return VdaFacts(installed=True, version=version, release=release,
                    ltsr=release in rules["vda_ltsr_releases"], list_of_ddcs=local, policy_list_of_ddcs=policy,
                    farm_guid=farm_guid, controllers=controllers, controller_source=source)


def vda_release(version: str) -> str:
    """"1912.0.9000.11" -> "1912"; "7.15.8000.7" -> "7.15"."""
    parts = version.split(".")
    if parts and re.fullmatch(r"\d{4}", parts[0]):
        return parts[0]
    return ".".join(parts[:2])


# ---------------------------------------------------------------- installed software

def service_names(system, ccs: str) -> set[str]:
    return {name.lower() for name in system.subkeys(rf"{ccs}\Services")}


def uninstall_keys(software):
    """(view, key, DisplayName, DisplayVersion) of every Add/Remove Programs entry that has a DisplayName, in
    both registry views (the 32-bit view's keys are under WOW6432Node)."""
    for view in UNINSTALL_VIEWS:
        if not software.key_exists(view):
            continue
        for key in software.subkeys(view):
            name = software.get_data(rf"{view}\{key}", "DisplayName")
            if name:
                yield view, key, name, software.get_data(rf"{view}\{key}", "DisplayVersion") or ""


def uninstall_entries(software) -> list[tuple[str, str, str]]:
    """(key, DisplayName, DisplayVersion) of every Add/Remove Programs entry, both registry views."""
    return [(key, name, version) for _, key, name, version in uninstall_keys(software)]


def detect(name: str, rule: dict, arp, services: set[str], software) -> Detected | None:
    evidence, display, version = [], "", ""
    for key, display_name, display_version in arp:
        if any(re.search(p, display_name) for p in rule["display_name"]):
            evidence.append(f"uninstall entry {key!r}: {display_name} {display_version}".rstrip())
            if not display:
                display, version = display_name, display_version
    evidence += [f"service {s}" for s in rule["services"] if s.lower() in services]
    evidence += [f"key HKLM\\SOFTWARE\\{k}" for k in rule["keys"] if software.key_exists(k)]
    if not evidence:
        return None
    return Detected(name=name, display_name=display, version=version, evidence=evidence)
