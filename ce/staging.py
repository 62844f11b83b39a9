"""Local scratch space and stop conditions for steps that move disks between an attached disk and a share.

qemu-img cannot write to SMB (no smb:// driver) and the kernel cannot mount CIFS here, so an export (or a convert
to a share) of a disk that is not raw converts it into a local scratch file and uploads that; a raw disk is
streamed, and only the empty container (a few MiB; a sparse file when fixed) is made there. Nothing of an image
on a share is copied locally: for a reverse image (or a convert from a share) ce.nbdexport serves the file to
qemu-img, which reads it through a small local qcow2 overlay (with the NBD socket, a few MiB of scratch space).

The scratch directory is ``$CE_SCRATCH`` when set, else the system temp directory; its free space is checked before
any byte is written, and it is removed whatever happens -- even when the process is killed outright (SIGKILL, the
CE VM losing power, the OOM killer): each scratch directory is named after its process, and the next one made
removes those whose process is gone (a converted disk left there would hold gigabytes, in RAM for /dev/shm).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import disks
from .document import Facts
from .errors import CeError, ScratchSpaceShort
from .sizes import mib


SCRATCH_ENV = "CE_SCRATCH"
SCRATCH_MARGIN = 64 << 20            # headroom for qemu-img metadata and the file system itself
OWNED_DIR = re.compile(r"^ce-[A-Za-z]+-(\d+)-")     # ce-PREFIX-PID-random, made by make_scratch_dir


def scratch_base() -> str:
    return os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()


def scratch_free(base: str | None = None) -> int:
    stats = os.statvfs(base or scratch_base())
    return stats.f_bavail * stats.f_frsize


class ScratchFacts(Facts):
    """The local scratch directory a plan checked: where, bytes free, bytes the step needs there."""
    directory: str
    free: int
    needed: int


def require_scratch(needed: int, what: str) -> dict:
    """Refuse clearly when the scratch directory cannot hold ``needed`` bytes; returns the facts for a plan."""
    base = scratch_base()
    if not os.path.isdir(base):
        raise ScratchSpaceShort(f"the scratch directory {base} does not exist: create it or unset {SCRATCH_ENV}")
    free = scratch_free(base)
    if free < needed + SCRATCH_MARGIN:
        raise ScratchSpaceShort(f"{what} needs {mib(needed + SCRATCH_MARGIN)} of local scratch space but {base} has "
                                f"{mib(free)} free; set {SCRATCH_ENV} to a directory on a larger disk")
    return {"directory": base, "free": free, "needed": needed}


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    path = make_scratch_dir(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_scratch_dir(prefix: str, base: str | None = None) -> Path:
    """A new ``ce-PREFIX-PID-xxxx`` directory in ``base`` (default: the scratch directory), after removing the
    ones a killed process left there."""
    base = base or scratch_base()
    remove_orphaned_dirs(base)
    return Path(tempfile.mkdtemp(prefix=f"ce-{prefix}-{os.getpid()}-", dir=base))


def remove_orphaned_dirs(base: str) -> list[str]:
    """Remove the scratch directories in ``base`` whose process no longer runs; returns their names."""
    removed = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        owner = OWNED_DIR.match(entry.name)
        if owner and entry.is_dir(follow_symlinks=False) and not _running(int(owner.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # another user's live process
        return True
    return True


def output_estimate(source: disks.DiskInfo, fmt: str, subformat: str | None) -> int:
    """Bytes a converted copy of ``source`` takes on a local disk: the whole virtual size for fixed outputs,
    qemu-img's measure of the allocated data (an upper bound: zeros it has not seen yet count) otherwise."""
    if disks.qemu_format(fmt) == "raw" or subformat == "fixed":
        return source.virtual_size
    try:
        return disks.measure(source.path, "qcow2", src_fmt=source.format).required
    except CeError:
        return source.virtual_size


