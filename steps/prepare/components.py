"""installMisa / installMcsio / installPvs: stage the installer from the payload store, install at first boot.

MISA and MCS IO are components of the VDA, so they are added with the VDA installer of exactly the installed
version (server or workstation flavour); the Citrix Provisioning target device has its own installer, at a version
from ``ce/data/pvs_support.json``. Nothing is staged for a component that is already present.
"""
from __future__ import annotations

import json
from importlib import resources

from ce import firstboot
from ce.errors import InvalidParams, PayloadStoreInvalid, VdaMissing
from ce.payloads import PayloadStore
from ce.plan import Planner

VDA_COMPONENTS = {"installMisa": ("misa", "Machine Identity Service"),
                  "installMcsio": ("mcsio", "Citrix MCS IODriver")}


def pvs_versions() -> dict[str, str]:
    return json.loads(resources.files("ce").joinpath("data/pvs_support.json").read_text())["versions"]


def pvs_build(requested: str) -> str:
    """The payload version for an installPvs value given as a release name or as the build itself."""
    table = pvs_versions()
    if requested in table:
        return table[requested]
    if requested in table.values():
        return requested
    raise InvalidParams(f"installPvs {requested!r} is not a supported Citrix Provisioning version; supported: "
                        f"{', '.join(table)} (or their builds {', '.join(table.values())})", field="installPvs")


def validate(params) -> None:
    for option in VDA_COMPONENTS:
        if getattr(params, option) and params.provisioningType != "Mcs":
            raise InvalidParams(f"{option} needs provisioningType Mcs (it is {params.provisioningType})", field=option)
    if params.installPvs is not None:
        if params.provisioningType != "Pvs":
            raise InvalidParams(f"installPvs needs provisioningType Pvs (it is {params.provisioningType}); "
                                f"an MCS image must not carry the PVS target device", field="installPvs")
        pvs_build(params.installPvs)


def stage_payload(planner: Planner, store: PayloadStore, component: str, version: str) -> str:
    """Copy a verified installer into the first-boot folder; returns its file name."""
    found = store.find(component, version=version)
    if len(found) != 1:
        raise PayloadStoreInvalid(f"payload store lists {len(found)} files for {component} {version}; expected "
                                  f"one installer")
    payload = found[0]
    target = f"{firstboot.folder(planner.root.systemroot)}\\payloads\\{payload.file}"
    planner.write_file(target, store.verified(payload), reason=f"installer {payload.describe()} "
                       f"(sha256 {payload.sha256[:12]}… checked against the payload manifest)")
    return payload.file


def plan_components(planner: Planner, facts, params, store_for) -> None:
    wanted = [name for option, (key, name) in VDA_COMPONENTS.items()
              if getattr(params, option) and not already(planner, facts, key, name)]
    if wanted:
        plan_vda_components(planner, facts, wanted, store_for())
    if params.installPvs is not None:
        plan_pvs(planner, facts, pvs_build(params.installPvs), store_for)


def already(planner: Planner, facts, key: str, name: str) -> bool:
    found = facts.components.get(key)
    if found:
        planner.warn(f"{key}_present", f"{name} is already installed ({found.version or 'version unknown'}): "
                     f"nothing to install")
    return bool(found)


def plan_vda_components(planner: Planner, facts, names: list[str], store: PayloadStore) -> None:
    if not facts.vda.installed:
        raise VdaMissing(f"{' and '.join(names)} are VDA components, but no Citrix VDA is installed in the image")
    flavour = "server" if facts.os.installation_type.lower().startswith("server") else "workstation"
    installer = stage_payload(planner, store, f"vda-{flavour}-installer", facts.vda.version)
    planner.first_boot("vda-add-components", "vda-add-components.ps1",
                       {"installer": installer, "components": names}, retries=2, required=True, timeout=3600,
                       reason=f"add {', '.join(names)} with the VDA {facts.vda.version} installer")


def plan_pvs(planner: Planner, facts, build: str, store_for) -> None:
    present = facts.components.get("pvs")
    if present and present.version.startswith(build):
        planner.warn("pvs_present", f"Citrix Provisioning target device {present.version} is already installed")
        return
    installer = stage_payload(planner, store_for(), "pvs-target-device", build)
    action = "upgrade" if present else "install"
    planner.first_boot("pvs-install", "pvs-install.ps1", {"installer": installer}, retries=2, required=True,
                       timeout=3600, reason=f"{action} the Citrix Provisioning target device {build}"
                       + (f" (found {present.version})" if present else ""))
