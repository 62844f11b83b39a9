"""One diagnostics run: ``plan`` reads what there is to collect (one read-only appliance, kept for the write in the
step's ``held`` stack) and checks the share and the scratch space; ``write`` builds the zip in scratch space and
uploads it as ``NAME.partial``, renamed to ``NAME`` once the share holds all of it.

The bundle's layout::

    summary.txt                      read first: disk state, first-boot outcomes, last boots' errors, ce's steps
    manifest.json                    every member (source, size, sha256) and every source left out or cut, and why
    ce/about.json                    this ce: version, host, parser               (ceLogs)
    ce/steps/<id>.json, <id>.log     each step's document and log from the store  (ceLogs, under the server)
    ce/journal.txt                   ce.service and ce-bootstrap.service          (ceLogs, under the server)
    image/inspect.json               the `ce inspect` report of the disk          (either image option)
    image/winevt/*.evtx              event logs, byte for byte                    (windowsEventLogs)
    image/logs/*                     Panther, setupapi, CBS, DISM, NetSetup, ntbtlog, MBR2GPT  (windowsEventLogs)
    image/minidump/*                 crash minidumps                              (windowsEventLogs)
    image/ce-firstboot/**            ce's first-boot plan, state, log, action parameters  (ipsData)
    image/hive-backups/*, image/partition-table-backups/*   the backups ce made       (ipsData)
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import disks, logs, staging
from ..changes import BundleWrite, Plan, Result
from ..errors import Canceled, CeError, DiagnosticsBundleBroken, RemoteExists, ShareFull
from ..guest import Drive, Guest
from ..sizes import human_size, mib
from ..smb.target import StorageLocation
from ..step import StepContext
from ..windows import inspect_guest
from .bundle import RESERVED, SUMMARY, Bundle, check
from .evtx import LogSummary, read_log
from .image import Source, copy, select
from .service import about, documents, journal, state_dir, step_lines, store_rows
from .summary import text as summary_text

INSPECT = "image/inspect.json"


@dataclass(frozen=True)
class Diagnostics:
    """One run's inputs, in the service's words turned into ce's."""
    location: StorageLocation
    name: str                          # the zip's file name on the share
    disk: str | None
    ce_logs: bool
    event_logs: bool
    ips_data: bool
    max_file: int
    max_bundle: int
    timeout: float
    root: str | None = None
    secrets: tuple[str, ...] = ()

    @property
    def reads_image(self) -> bool:
        return bool(self.disk) and (self.event_logs or self.ips_data)


@dataclass
class ImageSide:
    """What the plan found in the image, and the guest the write copies through."""
    guest: Guest | None = None
    filesystems: list[dict] = field(default_factory=list)
    report: dict | None = None
    failure: str = ""
    sources: list[Source] = field(default_factory=list)
    left: list[dict] = field(default_factory=list)


def plan(job: Diagnostics, ctx: StepContext) -> Plan:
    target = f"{job.location.location}\\{job.name}"
    with job.location.share() as share:
        if share.exists(job.name):
            raise RemoteExists(f"{target} already exists: choose another file name (the default is timestamped)")
        free, total = share.free_space()
    own = _own_side(job) if job.ce_logs else {}
    side = _open_image(job, ctx, used=own.get("bytes", 0)) if job.reads_image else ImageSide()
    ctx.session = side
    planned = own.get("bytes", 0) + sum(s.keep for s in side.sources) + (RESERVED if side.report else 0)
    if free < planned:
        raise ShareFull(f"{job.location.location} has {mib(free)} free but the bundle can take up to {mib(planned)}; "
                        f"free space on the share or lower the caps")
    largest = max((s.size for s in side.sources if s.keep), default=0)
    scratch = staging.require_scratch(planned + largest, "building the diagnostics bundle")
    left = side.left + [s.row() for s in side.sources if not s.keep] + own.get("left", [])
    members = 2 + own.get("files", 0) + bool(side.report) + sum(1 for s in side.sources if s.keep)
    change = BundleWrite(target=target, source=job.disk if job.reads_image else None, files=members, bytes=planned,
                         left_out=len(left))
    facts = {"target": {"location": str(job.location.location), "name": job.name, "path": target},
             "collect": [s.row() for s in side.sources if s.keep], "leftOut": left,
             "ce": {k: v for k, v in own.items() if k != "left"},
             "diskState": side.filesystems, "inspectFailure": side.failure or None,
             "caps": {"maxFileBytes": job.max_file, "maxBundleBytes": job.max_bundle},
             "space": {"shareFree": free, "shareTotal": total, "required": planned}, "scratch": scratch}
    return Plan(step="diagnostics", changes=[change], facts=facts)


def _own_side(job: Diagnostics) -> dict:
    rows, why = store_rows(state_dir())
    text, journal_why = journal(state_dir())
    docs = documents(rows)
    facts = json.dumps(about()).encode()
    left = [{"source": "ce:step store", "group": "ceLogs", "cut": f"left out: {why}"}] if why else []
    left += [{"source": "ce:journal", "group": "ceLogs", "cut": f"left out: {journal_why}"}] if journal_why else []
    return {"steps": len(rows), "journal": text is not None, "files": 1 + len(docs) + (text is not None),
            "bytes": len(facts) + sum(len(d) for _, d in docs) + len(text or b""), "left": left}


def _open_image(job: Diagnostics, ctx: StepContext, used: int) -> ImageSide:
    """One read-only launch: the filesystems' state, the inspect report (or why it failed), the sources."""
    info = disks.info(job.disk)
    ctx.progress(2, "starting the appliance")
    guest = ctx.held.enter_context(Guest([Drive(job.disk, info.format, readonly=True)]))
    ctx.held.enter_context(guest.deadline(job.timeout, "the diagnostics step"))
    ctx.progress(15, "reading the disk's state")
    side = ImageSide(guest=guest, filesystems=[fs.to_json() for fs in guest.filesystems(guest.devices()[0])])
    device = systemroot = None
    try:
        facts = inspect_guest(guest, info, job.root)
        side.report = facts.model_dump(mode="json")
        device, systemroot = facts.os.root_device, facts.os.systemroot
    except CeError as exc:                  # a BitLocker / hibernated / damaged image is why diagnostics run
        side.failure = f"[{exc.code}] {exc.message}"
        try:
            win = guest.windows_root(job.root)
            device, systemroot = win.device, win.systemroot
        except CeError:
            pass
    if systemroot is None:
        return side
    guest.mount_windows(device, readonly=True)
    ctx.progress(25, "listing the logs")
    side.sources, side.left = select(guest, systemroot, events=job.event_logs, ips=job.ips_data,
                                           max_file=job.max_file, max_bundle=job.max_bundle, used=used)
    return side


# ---------------------------------------------------------------- writing

def write(job: Diagnostics, planned: Plan, ctx: StepContext) -> dict:
    """Build the zip, check it reads back, upload it; returns the facts measured."""
    side: ImageSide = ctx.session or ImageSide()
    started = time.monotonic()
    for secret in job.secrets:
        logs.add_secret(secret)
    try:
        with staging.scratch_dir("diagnostics") as scratch:
            local = scratch / "bundle.zip"
            with Bundle(local, job.max_file, job.max_bundle) as out:
                steps = _write_own(out) if job.ce_logs else None
                events = _write_image(out, side, scratch, ctx) if side.guest else None
                cuts = [f"  {e.path or e.source}: {e.cut}" for e in out.entries if e.cut]
                if side.left:
                    cuts.append(f"  {len(side.left)} other file(s) of the image not selected or never collected "
                                f"(Security.evtx, MEMORY.DMP, ...): listed in manifest.json")
                header = [f"ce diagnostics {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
                          f"  disk {job.disk or '-'}; ceLogs {job.ce_logs}, windowsEventLogs {job.event_logs}, "
                          f"ipsData {job.ips_data}; target {planned.changes[0].target}"]
                out.add_bytes(SUMMARY, summary_text(
                    header=header, filesystems=side.filesystems, report=side.report, failure=side.failure,
                    events=events if job.event_logs else None, steps=steps, cuts=cuts),
                    source="generated", group="summary")
                manifest = out.finish({"created": header[0].split()[-1], "disk": job.disk, "target": job.name,
                                       "options": {"ceLogs": job.ce_logs, "windowsEventLogs": job.event_logs,
                                                   "ipsData": job.ips_data}, "leftOutInImage": side.left})
            built = time.monotonic()
            try:
                members = check(local)
            except (ValueError, OSError) as exc:
                raise DiagnosticsBundleBroken(f"the bundle built in {scratch} does not read back: {exc}") from None
            with job.location.share() as share:
                stored = share.upload(local, job.name, overwrite=False, cancel=ctx.stop,
                                      progress=ctx.band(85, 100, f"uploading {job.name}", unit="bytes"))
    finally:
        for secret in job.secrets:
            logs.remove_secret(secret)
    return {**planned.facts, "target": {**planned.facts["target"], "fileSize": stored.size},
            "bundle": {"members": members, "bytes": out.used, "compressed": stored.size,
                       "cut": manifest["cut"], "leftOut": len(manifest["leftOut"]) + len(side.left)},
            "buildSeconds": round(built - started, 3), "uploadSeconds": round(time.monotonic() - built, 3)}


def _write_own(out: Bundle) -> list[str]:
    out.add_bytes("ce/about.json", (json.dumps(about(), indent=2) + "\n").encode(), source="ce",
                  group="ceLogs")
    rows, why = store_rows(state_dir())
    if why:
        out.left_out("ce:step store", "ceLogs", None, why)
    for name, data in documents(rows):
        out.add_bytes(name, data, source="ce:step store", group="ceLogs")
    text, journal_why = journal(state_dir())
    if text is None:
        out.left_out("ce:journal", "ceLogs", None, journal_why)
    else:
        out.add_bytes("ce/journal.txt", text, source="journalctl", group="ceLogs")
    return step_lines(rows) if not why else [f"  {why}"]


def _write_image(out: Bundle, side: ImageSide, scratch: Path, ctx: StepContext) -> list[LogSummary]:
    """The inspect report, then each planned source's copy; the .evtx ones decoded for the summary."""
    if side.report is not None:
        out.add_bytes(INSPECT, (json.dumps(side.report, indent=2) + "\n").encode(), source="ce inspect",
                      group="windowsEventLogs")
    total = sum(s.keep for s in side.sources) or 1
    done, decoded = 0, []
    for source in side.sources:
        if ctx.stop():
            raise Canceled("the diagnostics step was canceled while copying from the image; nothing was uploaded")
        ctx.progress(30 + 55 * done / total, f"copying {source.windows_path}")
        if not source.keep:
            out.left_out(source.windows_path, source.group, source.size, source.cut)
            continue
        work = scratch / "copies"
        work.mkdir(exist_ok=True)
        local, whole = copy(side.guest, source, work)
        out.add_file(source.bundle_path, local, source=source.windows_path, group=source.group,
                     source_size=source.size, source_sha256=whole, cut=source.cut)
        if source.bundle_path.lower().endswith(".evtx"):
            decoded.append(read_log(str(local), source.bundle_path.rsplit("/", 1)[-1]))
        shutil.rmtree(work)
        done += source.keep
    return decoded


def describe(document: Plan | Result) -> list[str]:
    facts = document.facts
    if isinstance(document, Plan):
        lines = [f"collect  {row['source']} -> {row['path']} ({human_size(row['keep'])}"
                 f"{'; ' + row['cut'] if row.get('cut') else ''})" for row in facts.get("collect", [])]
        ce = facts.get("ce") or {}
        if ce:
            lines.append(f"collect  ce's side: {ce.get('steps', 0)} step document(s), journal "
                         f"{'yes' if ce.get('journal') else 'no'}")
        lines += [f"leave    {row['source']}: {row['cut']}" for row in facts.get("leftOut", [])]
        return lines
    b = facts.get("bundle", {})
    return [f"bundle   {b.get('members')} files, {human_size(b.get('bytes', 0))} -> {human_size(b.get('compressed', 0))}"
            f" zipped, {len(b.get('cut', []))} cut, {b.get('leftOut', 0)} source(s) left out; built in "
            f"{facts.get('buildSeconds', 0):.1f} s, uploaded in {facts.get('uploadSeconds', 0):.1f} s"]
