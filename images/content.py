"""What goes inside a phony Windows guest: registry values (per hive) and files (per volume).

Locations and value types follow ../shared/reference/windows-offline.md: the right hive, the right key path, the
right REG_* type, per-control-set data under the *current* control set only where Windows keeps it there (and
deliberately stale data in the other control sets, so a reader that assumes ControlSet001 is caught).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from ce.registry import RegType

from .spec import Spec

SZ, EXPAND_SZ, MULTI_SZ, DWORD, BINARY, NONE = (RegType.SZ, RegType.EXPAND_SZ, RegType.MULTI_SZ, RegType.DWORD,
                                                 RegType.BINARY, RegType.NONE)
UNINSTALL = r"Microsoft\Windows\CurrentVersion\Uninstall"
DISK_CLASS = r"Control\Class\{4d36e967-e325-11ce-bfc1-08002be10318}"
PROGRAM_FILES = "C:\\Program Files"

# (service name, Type, Start, ImagePath, Group) for drivers every modern Windows ships.
INBOX_SERVICES = [
    ("disk", 1, 0, r"System32\drivers\disk.sys", "SCSI Class"),
    ("partmgr", 1, 0, r"System32\drivers\partmgr.sys", "Boot Bus Extender"),
    ("storahci", 1, 0, r"System32\drivers\storahci.sys", "SCSI miniport"),
    ("intelide", 1, 3, r"System32\drivers\intelide.sys", "System Bus Extender"),
    ("atapi", 1, 3, r"System32\drivers\atapi.sys", "SCSI miniport"),
    ("vmbus", 1, 3, r"System32\drivers\vmbus.sys", "System Bus Extender"),
    ("storvsc", 1, 3, r"System32\drivers\storvsc.sys", "SCSI miniport"),
    ("netvsc", 1, 3, r"System32\drivers\netvsc.sys", "NDIS"),
    ("Tcpip", 1, 0, r"System32\drivers\tcpip.sys", "PNP_TDI"),
]
INBOX_WIN32_SERVICES = [("Netlogon", 3), ("TermService", 3), ("Dhcp", 2), ("W32Time", 3)]
BOOTMGR = b"BOOTMGR stub"
BOOT_FONT = b"\x00\x01\x00\x00" + b"\0" * 8 + b"wgl4_boot stub"     # a TrueType version-1.0 tag, then a stub


@dataclass
class GuestContent:
    """Registry values per hive (SYSTEM/SOFTWARE/SECURITY) and files per volume role ("system", "boot")."""
    registry: dict[str, list[tuple[str, str, RegType, object]]] = field(
        default_factory=lambda: {"SYSTEM": [], "SOFTWARE": [], "SECURITY": []})
    files: dict[str, bytes] = field(default_factory=dict)
    boot_files: dict[str, bytes] = field(default_factory=dict)

    def reg(self, hive: str, key: str, name: str, rtype: RegType, data: object) -> None:
        self.registry[hive].append((key, name, rtype, data))

    def service(self, ccs: str, name: str, stype: int, start: int, image: str, **extra) -> None:
        key = rf"{ccs}\Services\{name}"
        self.reg("SYSTEM", key, "Type", DWORD, stype)
        self.reg("SYSTEM", key, "Start", DWORD, start)
        self.reg("SYSTEM", key, "ErrorControl", DWORD, 1)
        self.reg("SYSTEM", key, "ImagePath", EXPAND_SZ, image)
        for value_name, value in extra.items():
            self.reg("SYSTEM", key, value_name, SZ, value)
        if image.lower().startswith("system32\\drivers\\"):
            self.files["Windows/" + image.replace("\\", "/")] = pe_stub(f"driver {name}")

    def uninstall_entry(self, key: str, display_name: str, version: str, publisher: str, **extra) -> None:
        path = rf"{UNINSTALL}\{key}"
        self.reg("SOFTWARE", path, "DisplayName", SZ, display_name)
        self.reg("SOFTWARE", path, "DisplayVersion", SZ, version)
        self.reg("SOFTWARE", path, "Publisher", SZ, publisher)
        for value_name, value in extra.items():
            self.reg("SOFTWARE", path, value_name, SZ, value)


def pe_stub(tag: str = "") -> bytes:
    """A ~330-byte PE32+ x86-64 console header: enough for `file` and libguestfs to say "x86_64"."""
    mz = bytearray(64)
    mz[0:2] = b"MZ"
    struct.pack_into("<I", mz, 0x3C, 64)
    coff = struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, 0xF0, 0x0022)
    opt = bytearray(0xF0)
    struct.pack_into("<H", opt, 0, 0x20B)          # PE32+
    struct.pack_into("<II", opt, 32, 0x1000, 0x200)  # section / file alignment
    struct.pack_into("<H", opt, 68, 3)             # console subsystem
    struct.pack_into("<I", opt, 108, 16)           # number of data directories
    return bytes(mz) + b"PE\0\0" + coff + bytes(opt) + tag.encode()


def lsa_unicode_string(text: str) -> bytes:
    """LSA policy blob: a self-relative UNICODE_STRING (x64 layout, buffer offset 16) then UTF-16LE text."""
    data = text.encode("utf-16-le")
    return struct.pack("<HHIQ", len(data), len(data), 0, 16) + data


def domain_sid(netbios: str) -> bytes:
    """A deterministic S-1-5-21-a-b-c domain SID in binary form."""
    a, b, c = (zlib.crc32(f"{netbios}{i}".encode()) for i in range(3))
    return struct.pack("<BB6s4I", 1, 4, (5).to_bytes(6, "big"), 21, a, b, c)


def windows_content(spec: Spec, hostname: str | None = None) -> GuestContent:
    win = spec.windows
    c = GuestContent()
    add_version(c, win)
    ccs = f"ControlSet{win['current_control_set']:03d}"
    add_select(c, win)
    for n in win["control_sets"]:
        name = f"ControlSet{n:03d}"
        current = name == ccs
        add_control_set(c, name, hostname or win["hostname"], win.get("domain"), current)
    add_domain(c, win.get("domain"))
    add_system_files(c, spec)
    if spec.vda:
        add_vda(c, ccs, spec.vda)
    if spec.pvs:
        add_pvs(c, ccs, spec.pvs)
    add_tools(c, ccs, spec.tools)
    return c


def add_version(c: GuestContent, win: dict) -> None:
    cv = r"Microsoft\Windows NT\CurrentVersion"
    for name, value in [("ProductName", win["product_name"]), ("EditionID", win["edition_id"]),
                        ("InstallationType", win["installation_type"]), ("CurrentBuild", str(win["build"])),
                        ("CurrentBuildNumber", str(win["build"])), ("CurrentVersion", "6.3"),
                        ("SystemRoot", "C:\\Windows"), ("PathName", "C:\\Windows"),
                        ("RegisteredOwner", "Citrix Golden Image"),
                        ("BuildLabEx", f"{win['build']}.1.amd64fre.rs_release.000000-0000")]:
        c.reg("SOFTWARE", cv, name, SZ, value)
    c.reg("SOFTWARE", cv, "CurrentMajorVersionNumber", DWORD, 10)
    c.reg("SOFTWARE", cv, "CurrentMinorVersionNumber", DWORD, 0)
    c.reg("SOFTWARE", cv, "UBR", DWORD, win["ubr"])
    c.reg("SOFTWARE", cv, "InstallDate", DWORD, 1_700_000_000)
    if "display_version" in win:
        c.reg("SOFTWARE", cv, "DisplayVersion", SZ, win["display_version"])
        c.reg("SOFTWARE", cv, "ReleaseId", SZ, "2009")  # frozen at 2009 since 20H2, as on real systems
    else:
        c.reg("SOFTWARE", cv, "ReleaseId", SZ, win["release_id"])
    c.reg("SOFTWARE", r"Microsoft\Windows\CurrentVersion", "ProgramFilesDir", SZ, PROGRAM_FILES)
    c.reg("SOFTWARE", r"Microsoft\Windows\CurrentVersion", "DevicePath", EXPAND_SZ, r"%SystemRoot%\inf")


def add_select(c: GuestContent, win: dict) -> None:
    current = win["current_control_set"]
    c.reg("SYSTEM", "Select", "Current", DWORD, current)
    c.reg("SYSTEM", "Select", "Default", DWORD, current)
    c.reg("SYSTEM", "Select", "LastKnownGood", DWORD, current)
    c.reg("SYSTEM", "Select", "Failed", DWORD, 0)


def add_control_set(c: GuestContent, ccs: str, hostname: str, domain: dict | None, current: bool) -> None:
    # Non-current control sets carry a stale name, as after a rename: reading the wrong set is visible.
    name = hostname if current else f"STALE-{ccs[-3:]}"
    dns = domain["dns"] if domain else ""
    c.reg("SYSTEM", rf"{ccs}\Control\ComputerName\ComputerName", "ComputerName", SZ, name.upper())
    tcpip = rf"{ccs}\Services\Tcpip\Parameters"
    for value_name, value in [("Hostname", name), ("NV Hostname", name), ("Domain", dns), ("NV Domain", dns)]:
        c.reg("SYSTEM", tcpip, value_name, SZ, value)
    c.reg("SYSTEM", rf"{ccs}\{DISK_CLASS}", "UpperFilters", MULTI_SZ, ["partmgr"])
    c.reg("SYSTEM", rf"{ccs}\Control\TimeZoneInformation", "TimeZoneKeyName", SZ, "W. Europe Standard Time")
    c.reg("SYSTEM", rf"{ccs}\Control\CrashControl", "AutoReboot", DWORD, 1)
    c.reg("SYSTEM", rf"{ccs}\Control\Terminal Server", "fDenyTSConnections", DWORD, 1)
    for svc, stype, start, image, group in INBOX_SERVICES:
        c.service(ccs, svc, stype, start, image, Group=group)
    for svc, start in INBOX_WIN32_SERVICES:
        c.service(ccs, svc, 0x20, start, r"%SystemRoot%\System32\svchost.exe -k netsvcs")


def add_domain(c: GuestContent, domain: dict | None) -> None:
    policy = "Policy"
    netbios = domain["netbios"] if domain else "WORKGROUP"
    c.reg("SECURITY", rf"{policy}\PolPrDmN", "", NONE, lsa_unicode_string(netbios))
    c.reg("SECURITY", rf"{policy}\PolPrDmS", "", NONE, domain_sid(netbios) if domain else b"")
    c.reg("SECURITY", rf"{policy}\PolDnDDN", "", NONE, lsa_unicode_string(domain["dns"] if domain else ""))
    c.reg("SECURITY", rf"{policy}\PolDnTrN", "", NONE, lsa_unicode_string(domain["dns"] if domain else ""))


def add_system_files(c: GuestContent, spec: Spec) -> None:
    c.files["Windows/System32/cmd.exe"] = pe_stub("cmd")
    c.files["Windows/explorer.exe"] = pe_stub("explorer")
    c.files["Windows/System32/ntoskrnl.exe"] = pe_stub("ntoskrnl")
    for log in ("SYSTEM.LOG1", "SYSTEM.LOG2", "SOFTWARE.LOG1", "SOFTWARE.LOG2"):
        c.files[f"Windows/System32/config/{log}"] = b""
    c.files["Users/Public/Desktop/desktop.ini"] = "[.ShellClassInfo]\r\n".encode("utf-16")
    c.files.update({f"Windows/Boot/{name}": data for name, data in windows_boot_files().items()})
    if spec.firmware == "uefi":
        c.boot_files.update(esp_files())
    else:
        c.boot_files.update(bios_boot_files())


def windows_boot_files() -> dict[str, bytes]:
    """``Windows\\Boot``: the boot managers and tools bcdboot copies to a boot partition (EFI, PCAT) and the font."""
    return {"EFI/bootmgfw.efi": pe_stub("bootmgfw"), "EFI/bootmgr.efi": pe_stub("bootmgr.efi"),
            "EFI/memtest.efi": pe_stub("memtest.efi"), "EFI/en-US/bootmgfw.efi.mui": pe_stub("bootmgfw.efi.mui"),
            "PCAT/bootmgr": BOOTMGR, "PCAT/memtest.exe": pe_stub("memtest.exe"), "Fonts/wgl4_boot.ttf": BOOT_FONT}


def esp_files() -> dict[str, bytes]:
    """An ESP as bcdboot leaves it (the BCD is added by the builder): copies of ``Windows\\Boot\\EFI`` and fonts."""
    boot = windows_boot_files()
    files = {f"EFI/Microsoft/Boot/{name[4:]}": data for name, data in boot.items() if name.startswith("EFI/")}
    files["EFI/Microsoft/Boot/Fonts/wgl4_boot.ttf"] = boot["Fonts/wgl4_boot.ttf"]
    files["EFI/Boot/bootx64.efi"] = boot["EFI/bootmgfw.efi"]
    return files


def bios_boot_files() -> dict[str, bytes]:
    """A BIOS boot volume's files (System Reserved, or C: without one; the BCD is added by the builder)."""
    boot = windows_boot_files()
    return {"bootmgr": boot["PCAT/bootmgr"], "Boot/BCD.LOG": b"", "Boot/memtest.exe": boot["PCAT/memtest.exe"],
            "Boot/Fonts/wgl4_boot.ttf": boot["Fonts/wgl4_boot.ttf"]}


def add_vda(c: GuestContent, ccs: str, vda: dict) -> None:
    version = vda["display_version"]
    vda_dir = rf"{PROGRAM_FILES}\Citrix\Virtual Desktop Agent"
    c.uninstall_entry("Citrix Virtual Desktop Agent", "Citrix Virtual Delivery Agent " + version[:4], version,
                      "Citrix Systems, Inc.",
                      UninstallString=rf'"{PROGRAM_FILES}\Citrix\XenDesktopVdaSetup\XenDesktopVdaSetup.exe" /removeall')
    c.uninstall_entry("{A0B1C2D3-1111-4A4A-9B9B-0123456789AB}", "Citrix Virtual Desktop Agent - x64", version,
                      "Citrix Systems, Inc.")
    agent = r"Citrix\VirtualDesktopAgent"
    c.reg("SOFTWARE", agent, "ProductVersion", SZ, version)
    c.reg("SOFTWARE", agent, "SupportMultipleForest", DWORD, 0)
    if "list_of_ddcs" in vda:
        c.reg("SOFTWARE", agent, "ListOfDDCs", SZ, vda["list_of_ddcs"])
    if "farm_guid" in vda:
        c.reg("SOFTWARE", agent, "FarmGUID", SZ, vda["farm_guid"])
    if "policy_list_of_ddcs" in vda:
        c.reg("SOFTWARE", r"Policies\Citrix\VirtualDesktopAgent", "ListOfDDCs", SZ, vda["policy_list_of_ddcs"])
    c.service(ccs, "BrokerAgent", 0x10, 2, rf'"{vda_dir}\BrokerAgent.exe"', DisplayName="Citrix Desktop Service")
    c.files["Program Files/Citrix/Virtual Desktop Agent/BrokerAgent.exe"] = pe_stub("BrokerAgent")
    c.files["Program Files/Citrix/XenDesktopVdaSetup/XenDesktopVdaSetup.exe"] = pe_stub("XenDesktopVdaSetup")
    if vda.get("mcsio"):
        c.uninstall_entry("{B1C2D3E4-2222-4B4B-8C8C-0123456789AB}", "Citrix MCS IODriver", version,
                          "Citrix Systems, Inc.")
        c.service(ccs, "CtxMcsWbc", 1, 0, r"System32\drivers\CtxMcsWbc.sys", Group="Filter")
        c.reg("SYSTEM", rf"{ccs}\{DISK_CLASS}", "UpperFilters", MULTI_SZ, ["CtxMcsWbc", "partmgr"])
    if vda.get("misa"):
        c.uninstall_entry("{C2D3E4F5-3333-4C4C-9D9D-0123456789AB}", "Machine Identity Service Agent", version,
                          "Citrix Systems, Inc.")
        c.files["Program Files/Citrix/Machine Identity Service Agent/MachineIdentityServiceAgent.exe"] = \
            pe_stub("MISA")


def add_pvs(c: GuestContent, ccs: str, pvs: dict) -> None:
    version = pvs["display_version"]
    c.uninstall_entry("{D3E4F5A6-4444-4D4D-8E8E-0123456789AB}", "Citrix Provisioning Target Device x64", version,
                      "Citrix Systems, Inc.")
    c.service(ccs, "bnistack", 1, 0, r"System32\drivers\bnistack6.sys", Group="NDIS")
    c.reg("SYSTEM", rf"{ccs}\Services\bnistack\PVSAgent", "WriteCacheType", DWORD, 9)
    c.service(ccs, "CVhdMp", 1, 0, r"System32\drivers\CVhdMp.sys", Group="SCSI miniport")
    c.service(ccs, "CfsDep2", 1, 0, r"System32\drivers\CfsDep2.sys", Group="Filter")
    c.service(ccs, "BNDevice", 0x10, 2, rf'"{PROGRAM_FILES}\Citrix\Provisioning Services\BNDevice.exe"')
    c.files["Program Files/Citrix/Provisioning Services/BNDevice.exe"] = pe_stub("BNDevice")


def add_tools(c: GuestContent, ccs: str, tools: dict) -> None:
    if "vmware" in tools:
        c.uninstall_entry("{4F1A3F2C-5555-4E4E-9F9F-0123456789AB}", "VMware Tools", tools["vmware"], "VMware, Inc.",
                          UninstallString="MsiExec.exe /I{4F1A3F2C-5555-4E4E-9F9F-0123456789AB}")
        c.reg("SOFTWARE", r"VMware, Inc.\VMware Tools", "InstallPath", SZ, rf"{PROGRAM_FILES}\VMware\VMware Tools")
        c.service(ccs, "VMTools", 0x10, 2, rf'"{PROGRAM_FILES}\VMware\VMware Tools\vmtoolsd.exe"')
        c.service(ccs, "pvscsi", 1, 0, r"System32\drivers\pvscsi.sys", Group="SCSI miniport")
        c.service(ccs, "vmxnet3ndis6", 1, 3, r"System32\drivers\vmxnet3.sys", Group="NDIS")
        c.files["Program Files/VMware/VMware Tools/vmtoolsd.exe"] = pe_stub("vmtoolsd")
    if "xenserver" in tools:
        c.uninstall_entry("{E4F5A6B7-6666-4F4F-8A8A-0123456789AB}", "XenServer VM Tools", tools["xenserver"],
                          "Cloud Software Group, Inc.")
        for svc in ("xenbus", "xenfilt", "xenvbd", "xenvif", "xennet", "xeniface"):
            c.service(ccs, svc, 1, 0 if svc in ("xenbus", "xenfilt", "xenvbd") else 3, rf"System32\drivers\{svc}.sys", Group="System Bus Extender")
        c.service(ccs, "XenAgent", 0x10, 2, rf'"{PROGRAM_FILES}\XenServer\XenTools\XenAgent.exe"')
    if "nutanix" in tools:
        c.uninstall_entry("{F5A6B7C8-7777-4A5A-9B9B-0123456789AB}", "Nutanix VirtIO", tools["nutanix"], "Nutanix")
        c.service(ccs, "vioscsi", 1, 0, r"System32\drivers\vioscsi.sys", Group="SCSI miniport")
        c.service(ccs, "netkvm", 1, 3, r"System32\drivers\netkvm.sys", Group="NDIS")
    if tools.get("hyperv"):
        # Written by the Hyper-V KVP exchange service while the guest runs on Hyper-V or Azure.
        params = r"Microsoft\Virtual Machine\Guest\Parameters"
        c.reg("SOFTWARE", params, "HostName", SZ, "HV-HOST-07.corp.example.com")
        c.reg("SOFTWARE", params, "PhysicalHostName", SZ, "HV-HOST-07")
        c.reg("SOFTWARE", params, "VirtualMachineName", SZ, "w11-gold")
