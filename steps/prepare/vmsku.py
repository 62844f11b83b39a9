"""ceVmSku: the Azure VM size a prepared image is for, and what that size needs of the image.

The rules are data (``ce/data/azure_vm_sizes.json``), each series with the Azure documents it rests on: a size
without a local temporary disk is refused (the service does not support them); a size that boots Generation 2
only needs a UEFI image (a BIOS/MBR image is refused, pointing to convertToUefi); a size that presents its disks
over NVMe only needs the Windows NVMe driver (stornvme) to start at boot, which the plan sets (through the
targetPlatform driver machinery, so a missing driver is handled as any other boot driver). A size of a series the
table does not list is accepted with a warning (``vm_sku_unchecked``): nothing is known about it, so nothing is
changed for it. ceVmSku applies to targetPlatform azure only; with another platform (or none) it is refused.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from ce.document import Facts
from ce.errors import InvalidParams, VmSkuNeedsUefi, VmSkuUnsupported

FIELD = "ceVmSku"
# naming convention: [Family][Sub-family] + vCPUs + [-constrained vCPUs] + additive features + [_accelerator] + _vN
NAME = re.compile(r"^(?P<family>[A-Z]+)(?P<vcpus>[0-9]+)(?:-(?P<constrained>[0-9]+))?"
                  r"(?P<features>[a-z]*)(?:_(?P<accelerator>[A-Z][A-Za-z0-9]*))?(?:_v(?P<version>[0-9]+))?$")
TIER = re.compile(r"^(?i:standard|basic)_")


@lru_cache(maxsize=1)
def rules() -> dict:
    return json.loads(resources.files("ce").joinpath("data/azure_vm_sizes.json").read_text())


def cite(key: str) -> str:
    source = rules()["sources"][key]
    return f"{source['title']} <{source['url']}>"


@dataclass(frozen=True)
class VmSize:
    name: str                     # as given, e.g. Standard_D4ads_v6
    family: str                   # D
    vcpus: int
    features: str                 # ads
    version: int | None           # 6
    series: str                   # Dadsv6
    rule: dict | None             # the table's entry for the series, None when it has none

    @property
    def generation2_only(self) -> bool:
        return bool(self.rule) and self.rule.get("generations") == [2]

    @property
    def nvme_only(self) -> bool:
        return bool(self.rule) and self.rule.get("storage") == "nvme"

    def sources(self) -> str:
        return "; ".join(cite(key) for key in (self.rule or {}).get("sources", []))

    def facts(self) -> dict:
        rule = self.rule or {}
        return {"name": self.name, "series": self.series, "known": self.rule is not None,
                "tempDisk": rule.get("temp_disk"), "generations": rule.get("generations"),
                "storage": rule.get("storage"),
                "sources": [rules()["sources"][key]["url"] for key in rule.get("sources", [])]}


class VmSkuFacts(Facts):
    """The Azure size a prepare was planned for, and the rule it matched (``known``: false for an unknown series)."""
    name: str
    series: str
    known: bool
    tempDisk: bool | None = None
    generations: list[int] | None = None
    storage: str | None = None
    sources: list[str]                     # the documentation pages the rule rests on


def parse(name: str) -> VmSize:
    """A size name by the naming convention; a name that does not follow it is refused (invalid_params)."""
    tier = TIER.match(name)
    match = NAME.fullmatch(name[tier.end():]) if tier else None
    if not match or int(match["vcpus"]) == 0:
        raise InvalidParams(f"params.{FIELD} {name!r} is not an Azure VM size name: Standard_ + family, vCPUs, "
                            f"features and version, e.g. Standard_D2s_v3 or Standard_D4ds_v6 "
                            f"({cite('NAMING')})", field=FIELD)
    version = int(match["version"]) if match["version"] else None
    series = match["family"] + match["features"] + (match["accelerator"] or "") + (f"v{version}" if version else "")
    return VmSize(name=name, family=match["family"], vcpus=int(match["vcpus"]), features=match["features"],
                  version=version, series=series, rule=rules()["series"].get(series))


def effective(sku: str | None, platform: str | None) -> VmSize | None:
    """The size a prepare is for: ceVmSku, or the service's default for azure; None for other platforms."""
    if sku is not None and platform != "azure":
        raise InvalidParams(f"params.{FIELD} names an Azure VM size; it applies only with targetPlatform azure "
                            f"(this job's targetPlatform is {platform or 'not given'}): leave it out or set "
                            f"targetPlatform azure", field=FIELD)
    if platform != "azure":
        return None
    return parse(sku if sku is not None else rules()["default"])


def validate(sku: str | None, platform: str | None) -> VmSize | None:
    """Everything that needs no disk: the name, the platform, and the temporary-disk rule."""
    size = effective(sku, platform)
    if size and size.rule is not None and size.rule.get("temp_disk") is False:
        raise VmSkuUnsupported(f"ceVmSku {size.name}: the {size.series} series has no local temporary disk, and "
                               f"the service does not support VM sizes without one — {size.sources()}")
    return size


def requirements(size: VmSize, firmware: str, partition_table: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """What ``size`` needs of an image with ``firmware``: (warnings as (code, message), boot drivers to add to
    targetPlatform azure's list); a Generation-2-only size and a BIOS image are refused."""
    if size.rule is None:
        return [("vm_sku_unchecked", f"ceVmSku {size.name}: ce has no rules for the {size.series} series "
                 f"(ce/data/azure_vm_sizes.json lists the series it has Azure's documents for); the image is "
                 f"prepared as for any Azure VM, without checks for that size")], []
    if size.generation2_only and firmware != "uefi":
        raise VmSkuNeedsUefi(f"ceVmSku {size.name}: the {size.series} series runs Generation 2 VMs only, which boot "
                             f"UEFI, and this image boots {firmware.upper()} from a {partition_table.upper()} "
                             f"disk: convert it to GPT/UEFI first (convertToUefi), or choose a size that also runs "
                             f"Generation 1 VMs — {size.sources()}")
    if not size.nvme_only:
        return [], []
    driver = rules()["nvme_driver"]
    return [], [dict(driver, needed_by=f"ceVmSku {size.name} ({size.series}, NVMe only)",
                     cite=f"{size.sources()}; {cite(driver['source'])}")]


def plan_vm_size(planner, facts, size: VmSize) -> list[dict]:
    """The size's facts and warnings into the plan; returns the boot drivers it needs (for plan_platform)."""
    planner.plan.facts["vmSku"] = size.facts()
    warnings, drivers = requirements(size, facts.firmware, facts.partition_table)
    for code, message in warnings:
        planner.warn(code, message)
    return drivers
