"""xdReconfigure: point the VDA at its controllers or its AD site, offline.

``controllers`` becomes ``ListOfDDCs`` (and the policy copy when one exists, since policy outranks the local
value); ``site_guid`` becomes ``FarmGUID`` (AD-based discovery) and removes any ``ListOfDDCs`` that would
outrank it. Options only ``XenDesktopVdaSetup.exe /reconfigure`` can apply (ports, HDX, WEM) become one
first-boot action whose arguments are validated tokens passed as data.
"""
from __future__ import annotations

import json
import re
from importlib import resources

from pydantic import BaseModel

from ce.errors import InvalidParams
from ce.plan import Planner
from ce.registry import RegType
from ce.windows.detection import VDA_KEY, VDA_POLICY_KEY

FQDN = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")
GUID = re.compile(r"^\{?[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}?$")
FIELD = "xdReconfigure"                   # the request field every refusal here names
OFFLINE_OPTIONS = {"controllers", "site_guid"}
# /reconfigure switches and the kind of value each takes
FIRST_BOOT_OPTIONS = {"portnumber": "port", "enable_hdx_ports": "flag", "enable_hdx_udp_ports": "flag",
                      "enable_real_time_transport": "flag", "wem_server": "fqdn", "wem_cloud_connectors": "fqdns"}
FLAG_VALUES = {"": True, "true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class XdParameter(BaseModel):
    ParameterName: str
    ParameterValue: str = ""


def support_rules() -> dict:
    return json.loads(resources.files("ce").joinpath("data/vda_support.json").read_text())


def vda_supported(version: str, rules: dict) -> bool:
    release = version.split(".")[0]
    cu = ".".join(version.split(".")[:3])
    return cu in rules["ltsr"].get(release, []) or release in rules["cr"]


def parse_controllers(value: str) -> list[str]:
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise InvalidParams("xdReconfigure controllers contains a control character (newline, tab, ...); "
                            "separate FQDNs with spaces or commas", FIELD)
    names = [n for n in re.split(r"[ ,]+", value) if n]
    if not names:
        raise InvalidParams("xdReconfigure controllers is empty; give one or more controller FQDNs", FIELD)
    bad = [n for n in names if not FQDN.match(n)]
    if bad:
        raise InvalidParams(f"xdReconfigure controllers: {', '.join(map(repr, bad))} is not a valid FQDN "
                            f"(letters, digits and hyphens in dot-separated labels)", FIELD)
    return names


def parse_site_guid(value: str) -> str:
    if not GUID.match(value.strip()):
        raise InvalidParams(f"xdReconfigure site_guid {value!r} is not a GUID "
                            f"(e.g. {{6c1b0e1d-3f55-4a0e-9d7b-2d4f8a41c2b7}})", FIELD)
    return "{" + value.strip().strip("{}").lower() + "}"


def options(params: list[XdParameter]) -> dict[str, str]:
    found: dict[str, str] = {}
    for p in params:
        name = p.ParameterName.strip().lower().lstrip("/")
        if name in found:
            raise InvalidParams(f"xdReconfigure lists {name} twice", FIELD)
        if name not in OFFLINE_OPTIONS | set(FIRST_BOOT_OPTIONS):
            raise InvalidParams(f"xdReconfigure parameter {p.ParameterName!r} is not supported; supported: "
                                f"{', '.join(sorted(OFFLINE_OPTIONS | set(FIRST_BOOT_OPTIONS)))}", FIELD)
        found[name] = p.ParameterValue
    return found


def reconfigure_arguments(name: str, value: str) -> list[str]:
    """The argv entries for one /reconfigure switch, from a strictly validated value."""
    kind, text = FIRST_BOOT_OPTIONS[name], value.strip()
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise InvalidParams(f"xdReconfigure {name} contains a control character (newline, tab, ...)", FIELD)
    if kind == "port":
        if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
            raise InvalidParams(f"xdReconfigure portnumber {value!r} is not a TCP port (1-65535)", FIELD)
        return [f"/{name}", str(int(text))]
    if kind == "flag":
        if text.lower() not in FLAG_VALUES:
            raise InvalidParams(f"xdReconfigure {name} takes no value or true/false, not {value!r}", FIELD)
        return [f"/{name}"] if FLAG_VALUES[text.lower()] else []
    names = parse_controllers(value)
    if kind == "fqdn" and len(names) != 1:
        raise InvalidParams(f"xdReconfigure {name} takes one FQDN, not {value!r}", FIELD)
    return [f"/{name}", ",".join(names)]


def validated(params: list[XdParameter]) -> tuple[list[str] | None, str | None, list[str]]:
    """(controllers, site_guid, /reconfigure argv) from xdReconfigure, or a clear error for anything invalid."""
    wanted = options(params)
    controllers = parse_controllers(wanted["controllers"]) if "controllers" in wanted else None
    site_guid = parse_site_guid(wanted["site_guid"]) if "site_guid" in wanted else None
    argv = [arg for name in sorted(set(wanted) - OFFLINE_OPTIONS)
            for arg in reconfigure_arguments(name, wanted[name])]
    return controllers, site_guid, argv


def plan_vda(planner: Planner, facts, params: list[XdParameter]) -> None:
    controllers, site_guid, argv = validated(params)
    if not (controllers or site_guid or argv):
        return
    if not facts.vda.installed:
        planner.warn("vda_missing", "no Citrix VDA is installed: xdReconfigure skipped, the prepare continues")
        return
    if not vda_supported(facts.vda.version, support_rules()):
        planner.warn("vda_unsupported", f"VDA {facts.vda.version} is not a supported release for "
                     f"reconfiguration (see ce/data/vda_support.json): xdReconfigure skipped, the prepare continues")
        return
    if controllers:
        plan_controllers(planner, facts, " ".join(controllers))
    if site_guid:
        plan_site(planner, facts, site_guid, keep_lists=bool(controllers))
    if argv:
        planner.first_boot("vda-reconfigure", "vda-reconfigure.ps1", {"arguments": argv}, retries=2,
                           required=False, timeout=1800,
                           reason=f"XenDesktopVdaSetup.exe /reconfigure {' '.join(argv)}")


def plan_controllers(planner: Planner, facts, value: str) -> None:
    planner.set("SOFTWARE", VDA_KEY, "ListOfDDCs", RegType.SZ, value, reason="xdReconfigure controllers")
    if facts.vda.policy_list_of_ddcs:
        planner.set("SOFTWARE", VDA_POLICY_KEY, "ListOfDDCs", RegType.SZ, value,
                    reason="xdReconfigure controllers (the policy copy outranks the local value)")


def plan_site(planner: Planner, facts, guid: str, keep_lists: bool) -> None:
    planner.set("SOFTWARE", VDA_KEY, "FarmGUID", RegType.SZ, guid, reason="xdReconfigure site_guid")
    if keep_lists:
        planner.warn("controllers_outrank_site", "both controllers and site_guid given: ListOfDDCs is used and "
                     "FarmGUID only as a fallback")
        return
    reason = "xdReconfigure site_guid: an explicit controller list would outrank AD site discovery"
    planner.delete_value("SOFTWARE", VDA_KEY, "ListOfDDCs", reason=reason)
    planner.delete_value("SOFTWARE", VDA_POLICY_KEY, "ListOfDDCs", reason=reason)
