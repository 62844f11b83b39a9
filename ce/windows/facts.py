"""The facts ce reads from a Windows disk, as the report ``inspect`` returns and the facts ``prepare`` plans on;
``InspectReport.describe()`` writes them for people."""
from __future__ import annotations

from ..document import Document

from ce.firstboot import FirstBootStatus
from ce.changes import StepWarning
from ce.sizes import human_size


class DiskFacts(Document):
    path: str
    format: str                          # raw | qcow2 | vhd | vhdx | vmdk
    subformat: str | None = None
    virtual_size: int
    actual_size: int | None = None
    partition_table: str
    firmware: str
    filesystems: list[dict]


class OsFacts(Document):
    product_name: str
    product: str
    edition: str
    build: int
    ubr: int
    version: str
    release: str
    arch: str
    installation_type: str
    hostname: str
    computer_name: str
    current_control_set: str
    systemroot: str
    root_device: str


class DomainFacts(Document):
    joined: bool
    netbios: str
    dns: str
    pending_unjoin: str = ""             # the domain a staged first-boot unjoin will leave


class VdaFacts(Document):
    installed: bool
    version: str = ""
    release: str = ""
    ltsr: bool = False
    list_of_ddcs: list[str] = []
    policy_list_of_ddcs: list[str] = []
    farm_guid: str = ""
    controllers: list[str] = []
    controller_source: str = "none"      # policy | registry | ad_site_guid | none


class Detected(Document):
    name: str
    display_name: str = ""
    version: str = ""
    evidence: list[str]


class StateFacts(Document):
    hibernated: bool
    unclean: bool
    bitlocker: bool
    dirty_hives: list[str]


class BootPartition(Document):
    """The partition the firmware boots from: the EFI system partition, or BIOS's active MBR partition."""
    device: str
    size: int
    filesystem: str
    label: str = ""


class BootDevice(Document):
    """A BCD device element: what it names, in words, and the partition of this disk it resolves to."""
    text: str                            # "GPT partition {guid} of disk {guid}", "MBR partition at offset N of ..."
    partition: str | None = None         # the partition of this disk it names (/dev/sda2)
    on_this_disk: bool | None = None     # False: another disk's; None: not a partition (or not decodable)
    decoded: dict                        # ce.windows.bcd.decode_device's fields

    def describe(self) -> str:
        if self.partition:
            return f"{self.partition} ({self.text})"
        where = {False: "not on this disk", True: "no such partition on this disk"}.get(self.on_this_disk)
        return f"{self.text} ({where})" if where else self.text


class BootEntryFacts(Document):
    guid: str
    alias: str | None = None             # bootmgr, memdiag, ...
    type: str                            # bootmgr | osloader | resume | memdiag | fwbootmgr | 0x........
    description: str | None = None
    path: str | None = None
    device: BootDevice | None = None
    osdevice: BootDevice | None = None   # resume objects: the hibernation file's device
    systemroot: str | None = None        # resume objects: the hibernation file's path
    default: bool = False
    display_index: int | None = None
    problems: list[str] = []


class BootStore(Document):
    device: str                          # the filesystem holding the store
    path: str                            # its path there, e.g. /EFI/Microsoft/Boot/BCD


class BootFacts(Document):
    esp: BootPartition | None = None               # GPT type ESP, or MBR type 0xEF
    system_partition: BootPartition | None = None  # MBR: the active partition BIOS boots (System Reserved)
    store: BootStore | None = None
    entries: list[BootEntryFacts] = []
    default: str | None = None                     # the GUID of {bootmgr}'s default entry
    display_order: list[str] = []                  # GUIDs, as the boot menu lists them


class InspectReport(Document):
    disk: DiskFacts
    firmware: str
    partition_table: str
    os: OsFacts
    domain: DomainFacts
    vda: VdaFacts
    components: dict[str, Detected | None]
    tools: list[Detected]
    state: StateFacts
    first_boot: FirstBootStatus | None = None   # actions ce staged and what the runner recorded
    boot: BootFacts | None = None               # None in reports of ce versions before it was read
    warnings: list[StepWarning]

    def describe(self) -> list[str]:
        """The report as aligned "Label  value" rows (its warnings are the step's, listed after them)."""
        r = self
        rows = [
            ("Disk", f"{r.disk.path} ({r.disk.format}{'/' + r.disk.subformat if r.disk.subformat else ''}, "
                     f"{human_size(r.disk.virtual_size)} virtual)"),
            ("Partitions", f"{r.partition_table.upper()}, firmware {r.firmware.upper()}"),
            ("Filesystems", ", ".join(describe_filesystem(fs) for fs in r.disk.filesystems)),
            ("Windows", f"{r.os.product} — {r.os.product_name} ({r.os.edition}, {r.os.installation_type})"),
            ("Version", f"{r.os.version}" + (f" ({r.os.release})" if r.os.release else "") + f", {r.os.arch}"),
            ("Hostname", f"{r.os.hostname} (NetBIOS {r.os.computer_name or '?'})"),
            ("Domain", f"{r.domain.dns or r.domain.netbios} ({r.domain.netbios})" if r.domain.joined
                       else f"not joined (workgroup {r.domain.netbios or '?'})"),
            ("Control set", f"{r.os.current_control_set} (root {r.os.root_device})"),
        ]
        if r.vda.installed:
            rows += [("Citrix VDA", f"{r.vda.version} (release {r.vda.release}{', LTSR' if r.vda.ltsr else ', CR'})"),
                     ("Controllers", f"{' '.join(r.vda.controllers) or '-'} (from {r.vda.controller_source})")]
            if r.vda.farm_guid:
                rows.append(("FarmGUID", r.vda.farm_guid))
        else:
            rows.append(("Citrix VDA", "not installed"))
        for name, label in (("pvs", "PVS target"), ("mcsio", "MCS IO"), ("misa", "Machine Identity")):
            found = r.components.get(name)
            rows.append((label, f"yes {found.version}".rstrip() if found else "no"))
        rows.append(("Hypervisor tools", ", ".join(f"{t.name} {t.version}".rstrip() for t in r.tools) or "none"))
        if r.domain.pending_unjoin:
            rows.append(("Pending", f"domain unjoin from {r.domain.pending_unjoin} at first boot"))
        if r.first_boot:
            fb = r.first_boot
            rows.append(("First boot", ("armed" if fb.armed else "disarmed") + f", {fb.boots} boot(s): " + ", ".join(
                f"{a['name']} {a['status']}" + (f" ({a['attempts']}/{a['retries']})" if a["attempts"] else "")
                for a in fb.staged)))
        if r.boot:
            rows += describe_boot(r.boot)
        flags = [f for f, on in (("hibernated", r.state.hibernated), ("unclean", r.state.unclean),
                                 ("BitLocker", r.state.bitlocker)) if on]
        flags += [f"dirty hive {h}" for h in r.state.dirty_hives]
        rows.append(("State", ", ".join(flags) or "clean"))
        width = max(len(k) for k, _ in rows)
        return [f"{k:<{width}}  {v}" for k, v in rows]


def describe_filesystem(fs: dict) -> str:
    text = f"{fs['device']} {fs['type']}"
    if fs.get("label"):
        text += f" '{fs['label']}'"
    if fs.get("role") and fs["role"] != "basic-data":
        text += f" [{fs['role']}]"
    if fs.get("ntfsState") not in (None, "clean"):
        text += f" ({fs['ntfsState']})"
    return text


def describe_boot(boot: BootFacts) -> list[tuple[str, str]]:
    rows = []
    for label, part in (("ESP", boot.esp), ("System partition", boot.system_partition)):
        if part:
            rows.append((label, f"{part.device} {part.filesystem}" + (f" '{part.label}'" if part.label else "")
                         + f", {human_size(part.size)}"))
    if not boot.store:
        return rows + [("BCD", "none found")]
    rows.append(("BCD", f"{boot.store.device}:{boot.store.path}, "
                        + (f"{len(boot.entries)} boot entries (* the default)" if boot.entries
                           else "no boot entries")))
    rows += [("Boot entry", describe_entry(entry)) for entry in boot.entries]
    return rows


def describe_entry(entry: BootEntryFacts) -> str:
    text = ("* " if entry.default else "") + entry.type + (f" '{entry.description}'" if entry.description else "")
    parts = [text]
    if entry.path:
        parts.append(entry.path)
    if entry.device:
        parts.append(f"device {entry.device.describe()}")
    if entry.osdevice and entry.osdevice != entry.device:
        parts.append(f"osdevice {entry.osdevice.describe()}")
    elif entry.osdevice:
        parts.append("osdevice the same")
    if entry.systemroot:
        parts.append(f"systemroot {entry.systemroot}")
    parts += [f"problem: {p}" for p in entry.problems]
    return ", ".join(parts)
