"""A prepare job planned in this process on a drive of an appliance the test already launched: what
``ce plan --job`` computes (the same job loading, inspect, support check and planner), without a launch of its own
(13-25 s each here). Keep at least one real ``ce plan`` per module for the command's own path."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ce import disks
from ce.cli.jobs import load_job
from ce.guest import Drive, Guest, WindowsRoot
from ce.step import StepContext
from ce.windows import WindowsSession, inspect_guest, plan_session
from ce.windows.support import require_supported_windows
from steps.prepare import STEP, plan_changes


def plan_prepare_on(guest: Guest, device: str, job: Path, disk: str) -> dict:
    """The plan document (as ``ce plan --json`` prints it) of the prepare ``job`` for ``disk``, which is attached
    to the launched ``guest`` as ``device``; the Windows volume is left unmounted."""
    kind, params = load_job(str(job), {STEP.name: STEP}, disk=disk, dryRun=True)
    facts = inspect_guest(guest, disks.info(disk), params.root, device)
    require_supported_windows(facts)
    root = WindowsRoot(device=facts.os.root_device, systemroot=facts.os.systemroot, arch=facts.os.arch)
    guest.mount_windows(root, readonly=True)
    try:
        with tempfile.TemporaryDirectory(prefix="ce-test-plan-") as work:
            session = WindowsSession(name=kind.name, guest=guest, root=root, facts=facts, workdir=Path(work))
            plan = plan_session(session, lambda planner, found: plan_changes(planner, found, params), StepContext())
    finally:
        guest.g.umount_all()
    return plan.model_dump(mode="json")


def plan_each(jobs: dict[str, tuple[Path, str]]) -> dict[str, dict]:
    """name -> (job, disk): every plan on ONE read-only appliance with all the disks attached."""
    names = list(jobs)
    drives = [Drive(jobs[n][1], disks.info(jobs[n][1]).format, readonly=True) for n in names]
    with Guest(drives) as guest:
        return {n: plan_prepare_on(guest, device, *jobs[n]) for n, device in zip(names, guest.devices())}
