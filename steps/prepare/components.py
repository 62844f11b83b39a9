"""installMisa / installMcsio / installPvs: stage the installer from the payload store, install at first boot.

MISA and MCS IO are components of the VDA, so they are added with the VDA installer of exactly the installed
version (server or workstation flavour); the Citrix Provisioning target device has its own installer, at a version
from ``ce/data/pvs_support.json``. Nothing is staged for a component that is already present.
"""
from __future__ import annotations

from ce.errors import InvalidParams, VdaMissing
from ce.installers import check_pvs_installer, plan_pvs, pvs_build, stage_payload
from ce.payloads import PARAM, PayloadStore, about
from ce.plan import Planner

VDA_COMPONENTS = {"installMisa": ("misa", "Machine Identity Service"),
                  "installMcsio": ("mcsio", "Citrix MCS IODriver")}
VDA_INSTALLERS = {"server": "vda-server-installer", "workstation": "vda-workstation-installer"}


def validate(params) -> None:
    for option in VDA_COMPONENTS:
        if getattr(params, option) and params.provisioningType != "Mcs":
            raise InvalidParams(f"{option} needs provisioningType Mcs (it is {params.provisioningType})", field=option)
    if params.installPvs is not None:
        if params.provisioningType != "Pvs":
            raise InvalidParams(f"installPvs needs provisioningType Pvs (it is {params.provisioningType}); "
                                f"an MCS image must not carry the PVS target device", field="installPvs")
        pvs_build(params.installPvs)


def check_payloads(params, store: PayloadStore) -> None:
    """Before the launch: a VDA installer for installMisa / installMcsio (the image decides the flavour and the
    version: every candidate is checked for presence and size, the one staged is hashed then), and installPvs's
    build, whole."""
    wanted = [option for option in VDA_COMPONENTS if getattr(params, option)]
    if wanted:
        with about(wanted[0]):
            found = store.find_any(tuple(VDA_INSTALLERS.values()))
        with about(PARAM):
            for payload in found:
                store.present(payload)
    if params.installPvs is not None:
        check_pvs_installer(store, pvs_build(params.installPvs))


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
    installer = stage_payload(planner, store, VDA_INSTALLERS[flavour], facts.vda.version)
    planner.first_boot("vda-add-components", "vda-add-components.ps1",
                       {"installer": installer, "components": names}, retries=2, required=True, timeout=3600,
                       reason=f"add {', '.join(names)} with the VDA {facts.vda.version} installer")
