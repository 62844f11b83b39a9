r"""upgradePvs: a PVS vDisk on a share -> a differencing child beside it with the PVS target device software staged
for an upgrade (or install) at the requested version, and optionally more space and the PVS server's TLS CA.

One launch on a local overlay of the vDisk (ce.childsession; the vDisk itself is never written). Everything that
needs the running Windows happens at its first boot, through ce's first-boot runner, in this order:

* the PVS server's CA (``PvsSslCaCertificate``, PEM: one certificate, no private key) trusted in the machine's root
  store, before the target device software that talks TLS to the server is installed;
* the target device installer from the payload store (``pvs-target-device`` at the build of ``installPvs``): an
  upgrade over an older one; a newer one is never downgraded (``pvs_downgrade_refused``), the same one is left;
* with ``outputSizeMb`` above the vDisk's size (a VHDX child may be larger than its parent; a VHD child may not),
  the Windows volume grown into the new space by Windows itself at first boot: resizing NTFS offline would rewrite
  its metadata from Linux (ntfs-3g's ntfsresize), and PVS boots the new version in maintenance mode anyway to run
  the installer, so the same boot grows the volume with Windows' own tools (Resize-Partition).
"""
from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field

from ce import firstboot, windows
from ce.changes import Plan, Result
from ce.document import Facts as FactsBase
from ce.childsession import ChildStepFacts, ChildParams, apply_child_session, child_write, open_child_session, validate_names
from ce.cli.smbargs import FORMAT_NAMES, location_flags, split_file, storage
from ce.errors import InvalidParams
from ce.installers import check_pvs_installer, plan_pvs, pvs_build
from ce.payloads import open_named, open_store
from ce.step import CliSpec, StepContext, StepType

NAME = "upgradePvs"
MiB = 1 << 20
MAX_PEM = 64 << 10
CA_FILE = "pvs-server-ca.cer"


class Params(ChildParams):
    outputSizeMb: int | None = Field(None, ge=1, le=64 << 20, description="the child's size in MiB: at least the "
                                     "vDisk's (default: the same); a VHD child keeps its parent's size")
    installPvs: str = Field(min_length=1, max_length=40, description="the PVS target device version "
                            "(ce/data/pvs_support.json: a release name or its build)")
    PvsSslCaCertificate: str | None = Field(None, max_length=MAX_PEM, description="the PVS server's TLS CA "
                                            "certificate (PEM), trusted in the image's machine root store")
    payloads: str | None = Field(None, description="payload store directory (the installer); default "
                                 "$CE_PAYLOADS, or the server's bootstrap 'payloads'")


def ca_certificate(pem: str) -> tuple[bytes, str, str]:
    """(DER, SHA-1 thumbprint as Windows prints it, subject) of the one CA certificate in ``pem``; refuses keys,
    several certificates, and certificates that are not CAs."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    if "PRIVATE KEY" in pem:
        raise InvalidParams("params.PvsSslCaCertificate holds a private key: give the CA's certificate only "
                            "(the key was not stored anywhere)", field="PvsSslCaCertificate")
    if pem.count("-----BEGIN CERTIFICATE-----") != 1:
        raise InvalidParams("params.PvsSslCaCertificate must hold exactly one PEM certificate",
                            field="PvsSslCaCertificate")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, UnicodeEncodeError, x509.ExtensionNotFound) as exc:
        raise InvalidParams(f"params.PvsSslCaCertificate is not a usable PEM CA certificate ({type(exc).__name__})",
                            field="PvsSslCaCertificate") from None
    if not ca:
        raise InvalidParams("params.PvsSslCaCertificate is not a CA certificate (basicConstraints CA:FALSE): give "
                            "the CA that issued the PVS server's certificate", field="PvsSslCaCertificate")
    der = cert.public_bytes(Encoding.DER)
    return der, hashlib.sha1(der).hexdigest().upper(), cert.subject.rfc4514_string()


def validate(params: Params) -> None:
    """Before the share is asked anything: the params, and the named store's installer of the build, whole (with
    no store named the image may already have the build: refused at use)."""
    check_params(params)
    store = open_named(params.payloads)
    if store is not None:
        check_pvs_installer(store, pvs_build(params.installPvs))


def check_params(params: Params) -> None:
    validate_names(params)
    pvs_build(params.installPvs)
    if params.PvsSslCaCertificate:
        ca_certificate(params.PvsSslCaCertificate)


def plan(params: Params, ctx: StepContext) -> Plan:
    check_params(params)
    wanted = None if params.outputSizeMb is None else params.outputSizeMb * MiB
    session = open_child_session(params, ctx, name=NAME, extra_bytes=0, size=wanted)
    ctx.session = session
    planned = windows.plan_session(session.windows, lambda planner, facts: plan_upgrade(planner, facts, params,
                                                                                       session), ctx)
    planned.changes.append(child_write(session, planned.facts["pvs"]["diskBytes"]))
    return planned


def plan_upgrade(planner, facts, params: Params, session) -> None:
    size, parent = session.overlay_size, session.parent.facts.virtual_size
    if params.PvsSslCaCertificate:
        der, thumbprint, subject = ca_certificate(params.PvsSslCaCertificate)
        target = f"{firstboot.folder(planner.root.systemroot)}\\payloads\\{CA_FILE}"
        planner.write_bytes(target, der, reason=f"the PVS server's CA {subject} (thumbprint {thumbprint})")
        planner.first_boot("import-ca-certificate", "import-ca-certificate.ps1",
                           {"certificate": CA_FILE, "thumbprint": thumbprint}, retries=2, required=True, timeout=300,
                           reason=f"trust the PVS server's CA {subject} before the target device is installed")
    action = plan_pvs(planner, facts, pvs_build(params.installPvs), lambda: open_store(params.payloads, NAME))
    if size > parent:
        planner.first_boot("extend-system-volume", "extend-system-volume.ps1", {"added_mib": (size - parent) // MiB},
                           retries=3, required=False,
                           timeout=600, reason=f"grow the Windows volume into the {(size - parent) // MiB} MiB "
                           "added at the end of the disk")
    planner.plan.facts["pvs"] = {"action": action, "build": pvs_build(params.installPvs),
                                 "found": (facts.components.get("pvs").version if facts.components.get("pvs")
                                           else None),
                                 "diskBytes": size, "grownBytes": size - parent}


def apply(params: Params, planned: Plan, ctx: StepContext) -> Result:
    return apply_child_session(ctx.session, planned, ctx, virtual_size=planned.facts["pvs"]["diskBytes"])


def describe(document: Plan | Result) -> list[str]:
    pvs = document.facts.get("pvs")
    if not pvs:
        return []
    lines = [f"PVS target device: {pvs['action']} {pvs['build']}" + (f" (found {pvs['found']})" if pvs["found"]
                                                                      else ""),
             f"disk of {pvs['diskBytes'] >> 20} MiB (grown by {pvs['grownBytes'] >> 20} MiB)"]
    child = document.facts.get("child")
    if child:
        lines.append(f"child {child['name']}: {child['fileSize']} bytes ({child['dataBytes']} bytes of disk data)")
    return lines


# ---------------------------------------------------------------- command line

def arguments(p) -> None:
    p.add_argument("image", help=r"the vDisk on its share: \\host\share\store\disk.vhdx")
    p.add_argument("--output", required=True, help="the child's file name, beside the vDisk (outputImageFilename)")
    p.add_argument("--install-pvs", required=True, metavar="VERSION", help="the PVS target device version (installPvs)")
    p.add_argument("--size-mb", type=int, help="the child's size in MiB (outputSizeMb; default: the vDisk's)")
    p.add_argument("--ca-cert", metavar="PEM_FILE", help="the PVS server's TLS CA certificate (PvsSslCaCertificate)")
    p.add_argument("--payloads", help="payload store directory (default $CE_PAYLOADS)")
    p.add_argument("--source-format", choices=tuple(FORMAT_NAMES), type=str.lower,
                   help="the vDisk's format (default: from its extension)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (overwriteOutput)")


def cli_params(args) -> dict:
    folder, name = split_file(args.image)
    ca = None
    if args.ca_cert:
        with open(args.ca_cert, encoding="ascii", errors="replace") as f:
            ca = f.read(MAX_PEM + 1)
    return {"inputStorageLocation": storage(args, folder), "inputImageFilename": name,
            "inputImageFormat": FORMAT_NAMES.get(args.source_format), "outputImageFilename": args.output,
            "overwriteOutput": args.overwrite, "installPvs": args.install_pvs, "outputSizeMb": args.size_mb,
            "PvsSslCaCertificate": ca, "payloads": args.payloads}


class PvsFacts(FactsBase):
    action: Literal["install", "upgrade", "present"]
    build: str
    found: str | None = None               # the target device version installed now
    diskBytes: int                         # the child's virtual size
    grownBytes: int


class Facts(ChildStepFacts):
    pvs: PvsFacts


STEP = StepType(name=NAME, Facts=Facts, summary="stage a PVS target device upgrade in a vDisk on a share, as a differencing child "
                "beside it", Params=Params, plan=plan, apply=apply,
                error_groups=("disk", "guest", "registry", "payload", "smb", "step"), validate=validate,
                describe=describe,
                cli=CliSpec("upgrade-pvs", "stage a PVS target device upgrade in a vDisk on a share (a differencing "
                            "child beside it)", arguments, cli_params,
                            flags={"inputImageFilename": "IMAGE", "inputImageFormat": "--source-format",
                                   "outputImageFilename": "--output", "overwriteOutput": "--overwrite",
                                   "installPvs": "--install-pvs", "outputSizeMb": "--size-mb",
                                   "PvsSslCaCertificate": "--ca-cert", "payloads": "--payloads",
                                   **location_flags("inputStorageLocation", "IMAGE")}))
