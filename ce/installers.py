"""Installers staged from the payload store into the first-boot folder, and the Citrix Provisioning target device's
versions (``ce/data/pvs_support.json``): what prepare's installPvs and upgradePvs share.

A staged installer is a verified copy of a payload (its sha256 checked against the store's manifest), written next
to the first-boot runner; a first-boot action runs it. The PVS target device is installed, or upgraded in place
over an older one; a newer one than requested is never downgraded, and the same version is left alone.
"""
from __future__ import annotations

import json
import re
from importlib import resources

from . import firstboot
from .errors import InvalidParams, PayloadStoreInvalid, PvsDowngradeRefused
from .payloads import PARAM, Payload, PayloadStore, about
from .plan import Planner

PVS_COMPONENT = "pvs-target-device"


def pvs_versions() -> dict[str, str]:
    return json.loads(resources.files("ce").joinpath("data/pvs_support.json").read_text())["versions"]


def pvs_build(requested: str, field: str = "installPvs") -> str:
    """The payload version for a PVS version given as a release name or as the build itself."""
    table = pvs_versions()
    if requested in table:
        return table[requested]
    if requested in table.values():
        return requested
    raise InvalidParams(f"{field} {requested!r} is not a supported Citrix Provisioning version; supported: "
                        f"{', '.join(table)} (or their builds {', '.join(table.values())})", field=field)


def version_key(version: str) -> tuple[int, ...]:
    """'2203.0.5000.12' -> (2203, 0, 5000, 12); the numeric parts only, so versions compare as numbers."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:4])


def product_version(build: str) -> tuple[int, ...]:
    """A release build ('2203.0.5000') as the target device reports itself (7.33.5000): the form an installed
    version is compared in."""
    release, *rest = version_key(build)
    table = json.loads(resources.files("ce").joinpath("data/pvs_support.json").read_text())["product_versions"]
    return (*version_key(table[str(release)]), *rest[1:]) if str(release) in table else (release, *rest)


def same_or_newer(installed: tuple[int, ...], wanted: tuple[int, ...]) -> tuple[bool, bool]:
    """(same, newer) of an installed version against a wanted one, both in one form; the same when the installed
    version starts with every part of the wanted one (2203.0.5000 is installed as 2203.0.5000.18)."""
    return installed[:len(wanted)] == wanted, installed[:len(wanted)] > wanted


def one_installer(store: PayloadStore, component: str, version: str) -> Payload:
    found = store.find(component, version=version)
    if len(found) != 1:
        raise PayloadStoreInvalid(f"payload store lists {len(found)} files for {component} {version}; expected "
                                  f"one installer")
    return found[0]


def check_pvs_installer(store: PayloadStore, build: str, field: str = "installPvs") -> None:
    """Before the launch: the build's one installer is in the store, its size and sha256 the manifest's. The image
    has no say in which file it is, and one installer hashes in well under a second (README, Payload store)."""
    with about(field):
        payload = one_installer(store, PVS_COMPONENT, build)
    with about(PARAM):
        store.verified(payload)


def stage_payload(planner: Planner, store: PayloadStore, component: str, version: str) -> str:
    """Copy a verified installer into the first-boot folder; returns its file name."""
    payload = one_installer(store, component, version)
    target = f"{firstboot.folder(planner.root.systemroot)}\\payloads\\{payload.file}"
    planner.write_file(target, store.verified(payload), reason=f"installer {payload.describe()} "
                       f"(sha256 {payload.sha256[:12]}… checked against the payload manifest)")
    return payload.file


def plan_pvs(planner: Planner, facts, build: str, store_for) -> str:
    """Stage the PVS target device ``build``: an install, or an upgrade over an older one. Returns what was
    planned: "install", "upgrade" or "present" (the same version is installed: nothing to do). A newer
    installed version is refused (pvs_downgrade_refused): a downgrade is not an upgrade."""
    present = facts.components.get("pvs")
    found = version_key(present.version) if present and present.version else None
    wanted = product_version(build) if found and found[0] < 1000 else version_key(build)
    same, newer = same_or_newer(found, wanted) if found else (False, False)
    if same:
        planner.warn("pvs_present", f"Citrix Provisioning target device {present.version} is already installed")
        return "present"
    if newer:
        raise PvsDowngradeRefused(f"the image has Citrix Provisioning target device {present.version}, newer than "
                                  f"{build}: ce does not downgrade it; ask for {present.version} or newer")
    installer = stage_payload(planner, store_for(), PVS_COMPONENT, build)
    action = "upgrade" if present else "install"
    planner.first_boot("pvs-install", "pvs-install.ps1", {"installer": installer}, retries=2, required=True,
                       timeout=3600, reason=f"{action} the Citrix Provisioning target device {build}"
                       + (f" (found {present.version})" if present else ""))
    return action
