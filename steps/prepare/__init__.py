"""prepare: make an offline Windows image ready for its target platform and Citrix provisioning.

Each concern is a sub-module contributing changes to one plan (vda: xdReconfigure so far). Options whose
mechanism has not landed yet are refused with a clear ``not_implemented`` error rather than silently ignored.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ce.plan import Planner

from .vda import NotImplementedYet, XdParameter, plan_vda, validated

NAME = "prepare"
PENDING_OPTIONS = ("installMisa", "installMcsio", "installPvs", "domainUnjoin", "targetPlatform", "md5Hash")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provisioningType: Literal["Mcs", "Pvs"]
    xdReconfigure: list[XdParameter] = []
    installMisa: bool = False
    installMcsio: bool = False
    installPvs: str | None = None
    domainUnjoin: bool = False
    targetPlatform: Literal["azure", "aws", "gcp", "vsphere", "xenserver", "nutanix"] | None = None
    md5Hash: str | None = None
    timeout: int = Field(7200, ge=60, le=86400, description="seconds")
    dryRun: bool = False


def validate(params: Params) -> None:
    """Everything that can be refused without looking at the disk, refused before a launch is paid for."""
    pending = [name for name in PENDING_OPTIONS if getattr(params, name) not in (None, False)]
    if pending:
        raise NotImplementedYet(f"prepare option(s) {', '.join(pending)} are not implemented yet in this version "
                                f"of ce; only xdReconfigure controllers / site_guid are")
    validated(params.xdReconfigure)


def plan(planner: Planner, facts, params: Params) -> None:
    validate(params)
    plan_vda(planner, facts, params.xdReconfigure)
