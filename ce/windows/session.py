"""The guest session of a step that edits Windows: one libguestfs launch to inspect (for the facts the step
decides on), plan, and -- unless it is a dry run -- apply, all within the step's timeout.

``open_session`` launches into the step's ``held`` exit stack so that a step's ``plan`` and ``apply`` share the
launch (``plan_session`` / ``apply_session``).
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ce import disks, faults
from ce.errors import DiskReadOnly, HiveDirty
from ce.guest import Drive, Guest, WindowsRoot
from ce.changes import Plan, Result
from ce.plan import Planner, apply
from ce.step import StepContext

from .detection import inspect_guest
from .facts import InspectReport
from .support import require_supported_windows

BLKROGET = 0x125E                                # linux/fs.h: is the block device read-only?


def require_writable(disk: str) -> None:
    """Checked before a launch: qemu would otherwise fail late with a lock or permission message."""
    try:
        fd = os.open(disk, os.O_RDWR)           # not os.access: root passes that even on a read-only file
        try:
            if stat.S_ISBLK(os.fstat(fd).st_mode) and struct.unpack("i", fcntl.ioctl(fd, BLKROGET, b"\0" * 4))[0]:
                raise OSError(errno.EROFS, "read-only block device")
        finally:
            os.close(fd)
    except OSError as exc:
        raise DiskReadOnly(f"{disk}: {exc.strerror}: the disk cannot be opened for writing (read-only file, "
                           f"device or mount); nothing was changed, a dry run (ce plan) can still read it") from None


@dataclass
class WindowsSession:
    """A launched guest with the Windows root mounted (read-only for a dry run) and the facts read from it."""
    name: str                        # the step, for messages and the plan
    guest: Guest
    root: WindowsRoot
    facts: InspectReport
    workdir: Path                    # local scratch for hive copies, removed with the session


def open_session(disk: str, *, root: str | None, timeout: int, dry_run: bool, name: str, ctx: StepContext,
                 held: ExitStack) -> WindowsSession:
    """Launch, inspect and mount the Windows root; everything opened is closed by ``held`` (the step's, so that
    a plan and its apply share the one launch). A writing session refuses an unsupported Windows, a read-only
    disk and dirty hives before anything is planned."""
    info = disks.info(disk)
    if not dry_run:
        require_writable(disk)
    ctx.progress(2, "starting the appliance")
    guest = held.enter_context(Guest([Drive(disk, info.format, readonly=dry_run)]))
    held.enter_context(guest.deadline(timeout, f"the {name} step"))
    facts = inspect_guest(guest, info, root, progress=ctx.progress, band=(20, 38))
    require_supported_windows(facts)
    if facts.state.dirty_hives and not dry_run:
        raise HiveDirty(f"hive(s) {', '.join(facts.state.dirty_hives)} have transactions pending in their "
                        f".LOG files (Windows was not shut down cleanly): boot and shut down Windows once, "
                        f"then prepare again; nothing was changed")
    win = WindowsRoot(device=facts.os.root_device, systemroot=facts.os.systemroot, arch=facts.os.arch)
    guest.mount_windows(win, readonly=dry_run)
    workdir = Path(held.enter_context(tempfile.TemporaryDirectory(prefix="ce-job-")))
    return WindowsSession(name=name, guest=guest, root=win, facts=facts, workdir=workdir)


def plan_session(session: WindowsSession, plan_fn: Callable, ctx: StepContext) -> Plan:
    """``plan_fn(planner, facts)`` collects the changes; the plan carries inspect's warnings too (a dry run
    shows what a run would refuse)."""
    ctx.progress(40, "planning")
    planner = Planner(session.name, session.guest, session.root, session.workdir)
    planner.plan.warnings.extend(session.facts.warnings)
    try:
        plan_fn(planner, session.facts)
        planner.finish()
    finally:
        planner.close()
    return planner.plan


def apply_session(session: WindowsSession, plan: Plan, ctx: StepContext) -> Result:
    ctx.progress(60, f"applying {len(plan.changes)} change(s)")
    faults.note("# apply")
    return apply(session.guest, session.root, plan)
