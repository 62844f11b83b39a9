"""prepareAndPublish: prepare the attached disk, then publish it as a vDisk to a PVS store on SMB -- one job.

A ``ce.step.sequence`` of the two real steps (steps/prepare, steps/publish), not a copy of either: one deadline,
one cancel, one progress scale (prepare 1 : publish 2), one result holding the prepare result and the publish
result in ``parts``. A publish that fails leaves the prepare part's result (every registry value, file and
first-boot action it changed, with its hive backups) in the failed step's result. A dry run plans the prepare
(read-only) and then the publish of the disk as it is now; the publish plan of a real run is made after the prepare
has written.

Params are every prepare param and every publish param, built from the two steps' own models; a field both
declare must mean the same (``disk`` does: the attached disk is prepared, then published). The step is built by
``build(prepare, publish)`` from the registry's two step types (steps/__init__.py), so no step imports another.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import create_model

from ce import diskexport
from ce.changes import Plan, Result
from ce.document import Facts
from ce.cli.smbargs import FORMAT_NAMES, location_flags, storage
from ce.step import CliSpec, Part, StepParams, StepType, sequence

NAME = "prepareAndPublish"
COMMON = set(StepParams.model_fields)              # timeout, dryRun: the sequence's own, set on each part by it


class NoFacts(Facts):
    """A sequence's facts are its parts'."""


def combined_params(*models) -> type[StepParams]:
    """One params model with the fields of ``models``; a field two of them declare differently is refused here,
    at import, naming the field (the two steps would read one job value two ways)."""
    fields, owner = {}, {}
    for model in models:
        for name, info in model.model_fields.items():
            if name in COMMON:
                continue
            if name in fields:
                first = fields[name]
                if (first.annotation, first.is_required(), first.default) != \
                        (info.annotation, info.is_required(), info.default):
                    raise TypeError(f"{NAME}: params field {name!r} means different things in {owner[name]} "
                                    f"({first.annotation}, default {first.default!r}) and {model.__module__} "
                                    f"({info.annotation}, default {info.default!r}); rename one of them")
                continue
            fields[name], owner[name] = info, model.__module__
    return create_model("PrepareAndPublishParams", __base__=StepParams,
                        **{name: (info.annotation, info) for name, info in fields.items()})


def fields_of(model) -> tuple[str, ...]:
    return tuple(name for name in model.model_fields if name not in COMMON)


def split(params, model) -> dict:
    """The values of ``model``'s fields (one half's params) out of the combined params."""
    return {name: getattr(params, name) for name in fields_of(model)}


def publish_lines(document: Plan | Result, publish_name: str) -> list[str]:
    """The publish half's lines (space and scratch before; size, bytes sent, hashes after)."""
    part = next((p for p in document.parts if p.step == publish_name), None)
    if part is None or (isinstance(part, Result) and (part.error or not part.facts)):
        return []
    return [f"{publish_name}: {line}" for line in diskexport.describe(part)]


# ---------------------------------------------------------------- command line

def arguments(p) -> None:
    p.add_argument("disk", help="the attached image: disk file or block device")
    p.add_argument("store", help=r"the PVS store folder: \\host\share\store")
    p.add_argument("--vdisk", required=True, help="vDisk name (no extension)")
    p.add_argument("--provisioning", required=True, choices=("Mcs", "Pvs"), help="provisioningType")
    p.add_argument("--platform", choices=("azure", "aws", "gcp", "vsphere", "xenserver", "nutanix"),
                   help="targetPlatform")
    p.add_argument("--vm-sku", help="ceVmSku: the Azure VM size (with --platform azure; default Standard_D2s_v3)")
    p.add_argument("--controllers", help="xdReconfigure controllers: FQDNs separated by spaces or commas")
    p.add_argument("--install-misa", action="store_true", help="installMisa")
    p.add_argument("--install-mcsio", action="store_true", help="installMcsio")
    p.add_argument("--install-pvs", metavar="VERSION", help="installPvs")
    p.add_argument("--domain-unjoin", action="store_true", help="domainUnjoin")
    p.add_argument("--md5", help="md5Hash: the disk's expected md5, checked first")
    p.add_argument("--payloads", help="payload store directory (default $CE_PAYLOADS)")
    p.add_argument("--root", help="Windows root device when the disk holds several")
    p.add_argument("--params", metavar="FILE", help="a JSON object of further prepare params (service names, e.g. "
                   "xdReconfigure); the options above replace its values")
    p.add_argument("--format", choices=tuple(FORMAT_NAMES), default="vhdx")
    p.add_argument("--overwrite", action="store_true", help="replace an existing vDisk file")
    p.add_argument("--hash", action="store_true", help="also return the md5 and sha256 of the published disk")


FLAGS = {"disk": "DISK", "vDiskName": "--vdisk", "provisioningType": "--provisioning", "targetPlatform": "--platform",
         "ceVmSku": "--vm-sku", "xdReconfigure": "--controllers / --params", "installMisa": "--install-misa",
         "installMcsio": "--install-mcsio", "installPvs": "--install-pvs", "domainUnjoin": "--domain-unjoin",
         "md5Hash": "--md5", "payloads": "--payloads", "root": "--root", "SmbDiskFormat": "--format",
         "overwriteTargetFile": "--overwrite", "hashDisk": "--hash", **location_flags("outputStorageLocation", "STORE")}


def cli_params(args) -> dict:
    raw = json.loads(Path(args.params).read_text()) if args.params else {}
    if not isinstance(raw, dict):
        raw = {"params": raw}                    # refused by the model, naming the field
    if args.controllers:
        raw["xdReconfigure"] = [x for x in raw.get("xdReconfigure", []) if x.get("ParameterName") != "controllers"] \
            + [{"ParameterName": "controllers", "ParameterValue": args.controllers}]
    options = {"provisioningType": args.provisioning, "targetPlatform": args.platform, "ceVmSku": args.vm_sku,
               "installPvs": args.install_pvs, "md5Hash": args.md5, "payloads": args.payloads, "root": args.root,
               "installMisa": args.install_misa or None, "installMcsio": args.install_mcsio or None,
               "domainUnjoin": args.domain_unjoin or None}
    raw.update({k: v for k, v in options.items() if v is not None})
    return {**raw, "disk": args.disk, "outputStorageLocation": storage(args, args.store), "vDiskName": args.vdisk,
            "SmbDiskFormat": FORMAT_NAMES[args.format], "overwriteTargetFile": args.overwrite, "hashDisk": args.hash}


def build(prepare: StepType, publish: StepType) -> StepType:
    """The step, from the registry's prepare and publish step types (steps/__init__.py passes them: a step module
    imports no other step)."""
    halves = (prepare, publish)

    def validate(params) -> None:
        """Both halves' refusals that need no disk, before the appliance starts or the share is asked anything."""
        for kind in halves:
            kind.parse({**split(params, kind.Params), "timeout": params.timeout, "dryRun": params.dryRun})

    return sequence(
        NAME, "prepare the attached image, then publish it as a vDisk in a PVS store on SMB (one job, one result)",
        combined_params(prepare.Params, publish.Params),
        (Part(prepare, lambda params, done: split(params, prepare.Params), weight=1),
         Part(publish, lambda params, done: split(params, publish.Params), weight=2)),
        disk_params=("disk",), validate=validate, Facts=NoFacts, describe=lambda document: publish_lines(document, publish.name),
        cli=CliSpec("prepare-and-publish", "prepare a disk, then publish it as a vDisk in a PVS store on SMB",
                    arguments, cli_params, flags=FLAGS))
