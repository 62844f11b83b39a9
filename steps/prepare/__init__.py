"""prepare: make an offline Windows image ready for its target platform and Citrix provisioning.

Each concern is a sub-module contributing changes to one plan: vda (xdReconfigure), components (MISA, MCS IO,
PVS), unjoin (domainUnjoin). Work that needs the running OS becomes first-boot actions (ce/firstboot.py).
Options whose mechanism has not landed yet are refused with a clear ``not_implemented`` error rather than
silently ignored.
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from ce import hashing, windows
from ce.changes import Plan, Result
from ce.errors import Md5Mismatch, NotImplementedYet
from ce.payloads import open_named, open_store
from ce.plan import GuestFacts, Planner
from ce.step import StepContext, StepParams, StepType

from . import components, vmsku
from .platform import check_driver_payloads, plan_platform
from .unjoin import plan_unjoin
from .vda import XdParameter, plan_vda, validated

NAME = "prepare"
PENDING_OPTIONS: tuple[str, ...] = ()


class Params(StepParams):
    disk: str = Field(description="the attached image: disk file (raw, qcow2, vhd, vhdx, vmdk) or block device")
    root: str | None = Field(None, description="Windows root device when the disk holds several")
    provisioningType: Literal["Mcs", "Pvs"]
    xdReconfigure: list[XdParameter] = []
    installMisa: bool = False
    installMcsio: bool = False
    installPvs: str | None = None
    domainUnjoin: bool = False
    targetPlatform: Literal["azure", "aws", "gcp", "vsphere", "xenserver", "nutanix"] | None = None
    ceVmSku: str | None = Field(None, max_length=64, description="the Azure VM size the image is prepared for "
                                "(targetPlatform azure only; default Standard_D2s_v3): sizes without a local "
                                "temporary disk are refused, Generation-2-only sizes need a UEFI image, NVMe-only "
                                "sizes get the NVMe driver (stornvme) started at boot")
    md5Hash: str | None = Field(None, pattern=r"^[0-9a-fA-F]{32}$", description="md5 of the disk's contents "
                                "(what export's hashDisk reports); checked before anything else, a mismatch fails")
    payloads: str | None = Field(None, description="payload store directory (installers, drivers); default "
                                 "$CE_PAYLOADS, or the server's bootstrap 'payloads'")


class Facts(GuestFacts):
    vmSku: vmsku.VmSkuFacts | None = None


def validate(params: Params) -> None:
    """Everything that can be refused without looking at the disk, refused before a launch is paid for."""
    check_options(params)
    check_payloads(params)


def check_options(params: Params) -> None:
    pending = [name for name in PENDING_OPTIONS if getattr(params, name) not in (None, False)]
    if pending:
        raise NotImplementedYet(f"prepare option(s) {', '.join(pending)} are not implemented yet in this version "
                                f"of ce")
    validated(params.xdReconfigure)
    components.validate(params)
    vmsku.validate(params.ceVmSku, params.targetPlatform)


def check_payloads(params: Params) -> None:
    """The named payload store, when an option may take something from it: its manifest, and the candidates of
    what the options need (components.check_payloads, check_driver_payloads). With no store named nothing is
    refused here: the image may need nothing from one (components present, drivers inbox)."""
    if not (params.installMisa or params.installMcsio or params.installPvs is not None or params.targetPlatform):
        return
    store = open_named(params.payloads)
    if store is None:
        return
    components.check_payloads(params, store)
    if params.targetPlatform:
        size = vmsku.validate(params.ceVmSku, params.targetPlatform)
        nvme = [vmsku.rules()["nvme_driver"]["service"]] if size and size.nvme_only else []
        check_driver_payloads(store, params.targetPlatform, nvme)


def payload_store(params: Params):
    """The store, opened only when an option needs a payload."""
    return open_store(params.payloads, "this prepare")


def plan_changes(planner: Planner, facts, params: Params) -> None:
    check_options(params)
    plan_vda(planner, facts, params.xdReconfigure)
    components.plan_components(planner, facts, params, lambda: payload_store(params))
    if params.domainUnjoin:
        plan_unjoin(planner, facts)
    if params.targetPlatform:
        size = vmsku.validate(params.ceVmSku, params.targetPlatform)
        extra = vmsku.plan_vm_size(planner, facts, size) if size else []
        plan_platform(planner, facts, params.targetPlatform,
                      lambda: payload_store(params) if params.payloads or os.environ.get("CE_PAYLOADS") else None,
                      extra)


def check_md5(params: Params, ctx: StepContext) -> None:
    """The service's pre-check: refuse to touch a disk that is not the one the job was made for."""
    if not params.md5Hash:
        return
    ctx.progress(1, "checking the disk's md5")
    found = hashing.hash_disk(params.disk, algorithms=("md5",), cancel=ctx.stop).hashes["md5"]
    if found != params.md5Hash.lower():
        raise Md5Mismatch(f"the contents of {params.disk} have md5 {found}, the job expects "
                          f"{params.md5Hash.lower()}: wrong or damaged disk, nothing was changed")


def plan(params: Params, ctx: StepContext) -> Plan:
    """The md5 pre-check, then one launch (kept open in ``ctx.held`` for apply): inspect, mount, plan."""
    check_md5(params, ctx)
    session = windows.open_session(params.disk, root=params.root, timeout=params.timeout, dry_run=params.dryRun,
                                   name=NAME, ctx=ctx, held=ctx.held)
    ctx.session = session
    return windows.plan_session(session, lambda planner, facts: plan_changes(planner, facts, params), ctx)


def apply(params: Params, planned: Plan, ctx: StepContext) -> Result:
    result = windows.apply_session(ctx.session, planned, ctx)
    result.facts = {**planned.facts, **result.facts}        # what the plan read (vmSku), then the commits
    return result


STEP = StepType(name=NAME, Facts=Facts, summary="edit an offline Windows image for its target platform and Citrix provisioning "
                "(dry run with dryRun)", Params=Params, plan=plan, apply=apply, disk_params=("disk",),
                error_groups=("disk", "guest", "registry", "payload", "step"),
                validate=validate)
