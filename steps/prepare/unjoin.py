"""domainUnjoin: leave the AD domain at first boot without a domain controller; mark the image meanwhile.

Offline, the SECURITY hive's LSA policy could be rewritten, but no documented recipe exists; the supported way
is ``Win32_ComputerSystem.UnjoinDomainOrWorkgroup`` with options 0 (local only, no DC needed) at first boot.
Until it has run, ``SOFTWARE\\Citrix\\ImagePortability`` ``PendingDomainUnjoin`` names the domain.
"""
from __future__ import annotations

from ce.plan import Planner
from ce.registry import RegType
from ce.windows.detection import PENDING_UNJOIN_KEY as MARKER_KEY     # inspect reads the mark from there
WORKGROUP = "WORKGROUP"


def plan_unjoin(planner: Planner, facts) -> None:
    if not facts.domain.joined:
        planner.warn("not_domain_joined", f"the image is not joined to a domain (workgroup "
                     f"{facts.domain.netbios or '?'}): nothing to unjoin")
        return
    domain = facts.domain.dns or facts.domain.netbios
    planner.set("SOFTWARE", MARKER_KEY, "PendingDomainUnjoin", RegType.SZ, domain,
                reason=f"marks the image as pending unjoin from {domain} until first boot has done it")
    planner.first_boot("domain-unjoin", "domain-unjoin.ps1", {"workgroup": WORKGROUP}, retries=3, required=True,
                       timeout=600, reason=f"leave domain {domain} ({facts.domain.netbios}) for workgroup "
                       f"{WORKGROUP} without contacting a domain controller")
