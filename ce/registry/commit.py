"""Commit an edited hive into a guest image, through a ``ce.guest.Guest``: verified, backed up, swapped by a
rename."""
from __future__ import annotations

import datetime as dt
import os
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..document import camel_keys
from ..errors import HiveCommitFailed, HiveMissing
from .hive import Hive, sha256_file
from .replay import verify_changes

if TYPE_CHECKING:
    from ..guest import Guest

STAGED_SUFFIX = ".ce-new"
NTFS3G_RENAME_INFIX = ".ntfs-3g-"
BACKUP_DIR_NAME = "ce-backup"
NTFS_ACL_XATTR = "system.ntfs_acl"


@dataclass(frozen=True)
class CommitResult:
    guest_path: str
    sha256_before: str
    sha256_after: str
    backup_path: str | None        # the hive as it was before this job's first commit
    backup_created: bool
    changes: int
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return camel_keys({**self.__dict__, "warnings": list(self.warnings)})


def download_hive(guest: Guest, guest_path: str, local_dir: str | os.PathLike) -> Path:
    """Copy a hive out of the image to a new file in ``local_dir`` (a stale ``.ce-new`` beside it is ignored).
    Open it with ``Hive.open(local, label=guest_path)`` so header errors name the hive in the image."""
    if not guest.is_file(guest_path):
        raise HiveMissing(
            f"{guest_path} does not exist in the image; the Windows installation is incomplete or damaged")
    fd, local = tempfile.mkstemp(prefix=posixpath.basename(guest_path) + ".", dir=local_dir)
    os.close(fd)
    guest.download(guest_path, local)
    return Path(local)


def cleanup_stale(guest: Guest, guest_path: str) -> list[str]:
    """Undo what an interrupted commit may have left; returns the paths restored or removed.

    ntfs-3g renames over an existing file in steps (link the target to ``<name>.ntfs-3g-<n>``, unlink it, link
    the source, unlink the source, unlink the temporary link), so a crash in between can leave the original
    hive only under the temporary name: it is renamed back. The staged ``.ce-new`` and leftover temporary links
    are removed."""
    directory, name = posixpath.split(guest_path)
    renamed = sorted(posixpath.join(directory, n) for n in guest.listdir(directory)
                     if n.startswith(name + NTFS3G_RENAME_INFIX))
    touched = []
    if not guest.is_file(guest_path) and renamed:
        guest.move(renamed.pop(), guest_path)
        touched.append(guest_path)
    for path in [guest_path + STAGED_SUFFIX, *renamed]:
        if guest.is_file(path):
            guest.remove(path)
            touched.append(path)
    return touched


def commit_hive(guest: Guest, guest_path: str, hive: Hive, expected: Callable[[Hive], object] | None = None,
                backup_dir: str | None = None, backup_stamp: str | None = None) -> CommitResult:
    """Replace ``guest_path`` in the image with the edited ``hive``: verified, backed up, swapped by a rename.

    ``guest`` is a launched ``Guest`` with the filesystem holding ``guest_path`` mounted read-write.

    1. Commit to a local file and re-open it: every change recorded on ``hive`` reads back exactly,
       ``expected(reopened)`` neither raises nor returns False, and every record parses.
    2. Refuse if the image's hive changed since it was downloaded.
    3. Upload it as ``<guest_path>.ce-new``, check its sha256, sync.
    4. Back up the original as ``<backup_dir>/<HIVE>.<stamp>`` unless that exists (pass the job's stamp, and
       only the pristine hive is kept). The backup is a hard link, not a copy: once the rename is done it *is*
       the original file, bytes and NTFS permissions, at no cost in space or time. A copy would be a new file,
       and ntfs-3g gives new files a security descriptor granting Everyone full control, so any user could
       read the hive's secrets from it. On a filesystem without hard links (FAT: a BCD on the ESP, where no
       permissions exist either) the backup is a copy, checked against the original and renamed into place.
    5. Rename the staged file over the original, sync, check the sha256.

    A crash leaves the old or the new hive, never a torn one (``cleanup_stale`` tidies up, see there).

    Permissions: the new hive is a file ntfs-3g created, so it carries ntfs-3g's default security descriptor,
    and the original's cannot be copied onto it (libguestfs's Python binding takes xattr values as str and
    rejects NUL bytes). When the two differ, the result carries a warning.

    Transaction logs: hivex commits with both sequence numbers equal, so the new hive is clean, and Windows
    replays .LOG1/.LOG2 only into a dirty hive (bad checksum or unequal sequence numbers); the stale logs
    beside it are ignored and stay in place. Hives that are dirty when read are refused (``check_header``):
    their logs may hold data hivex cannot see.
    """
    if not hive.changes:
        return CommitResult(guest_path, hive.source_sha256, hive.source_sha256, None, False, 0)
    local = hive.path.with_name(hive.path.name + STAGED_SUFFIX)
    try:
        _commit_verified(hive, local, expected, guest_path)
        return _replace_in_image(guest, guest_path, hive, local, backup_dir or _default_backup_dir(guest_path),
                                 backup_stamp or _utc_stamp())
    finally:
        local.unlink(missing_ok=True)


def _commit_verified(hive: Hive, local: Path, expected: Callable[[Hive], object] | None, guest_path: str) -> None:
    try:
        hive.commit(local)
        with Hive.open(local, label=f"{guest_path} (edited copy)") as written:
            problems = verify_changes(written, hive.changes)
            if problems:
                raise HiveCommitFailed(f"{guest_path}: the edited hive does not read back as written, the image "
                                       "is unchanged: " + "; ".join(problems[:5]))
            if expected is not None and expected(written) is False:
                raise HiveCommitFailed(f"{guest_path}: the edited hive failed the caller's check, the image is "
                                       "unchanged")
            written.check_structure()
    except HiveCommitFailed:
        raise
    except Exception as exc:
        raise HiveCommitFailed(f"{guest_path}: the edited hive failed verification, the image is unchanged: "
                               f"{exc}") from exc


def _replace_in_image(guest: Guest, guest_path: str, hive: Hive, local: Path, backup_dir: str,
                      stamp: str) -> CommitResult:
    staged = guest_path + STAGED_SUFFIX
    after = sha256_file(local)
    try:
        before = guest.checksum(guest_path, "sha256")
        if before != hive.source_sha256:
            raise HiveCommitFailed(f"{guest_path} changed in the image since it was read; edit it again from "
                                   "a fresh copy")
        guest.upload(str(local), staged)
        _expect_checksum(guest, staged, after)
        guest.sync_now()
        warnings = _permission_warnings(guest, guest_path, staged)
        backup, created = _link_backup(guest, guest_path, backup_dir, stamp)
    except Exception as exc:
        _remove_quietly(guest, staged)
        if isinstance(exc, HiveCommitFailed):
            raise
        raise HiveCommitFailed(f"{guest_path}: could not stage the new hive, the image's hive is unchanged: "
                               f"{exc}") from exc
    _rename_over(guest, staged, guest_path, after, backup, created)
    return CommitResult(guest_path, before, after, backup, created, len(hive.changes), warnings)


def _link_backup(guest: Guest, guest_path: str, backup_dir: str, stamp: str) -> tuple[str, bool]:
    backup = posixpath.join(backup_dir, f"{posixpath.basename(guest_path)}.{stamp}")
    if guest.is_file(backup):
        return backup, False
    guest.make_dirs(backup_dir)
    try:
        guest.hard_link(guest_path, backup)
    except RuntimeError:            # FAT (a BCD on the ESP) has no hard links: a verified copy, renamed into place
        staged = backup + ".ce-copy"
        guest.copy(guest_path, staged)
        _expect_checksum(guest, staged, guest.checksum(guest_path))
        guest.move(staged, backup)
    return backup, True


def _rename_over(guest: Guest, staged: str, guest_path: str, sha256: str, backup: str,
                 backup_created: bool) -> None:
    try:
        guest.move(staged, guest_path)
        guest.sync_now()
        _expect_checksum(guest, guest_path, sha256)
    except Exception as exc:
        _remove_quietly(guest, staged)
        if backup_created and _same_file(guest, guest_path, backup):
            _remove_quietly(guest, backup)      # the rename did not happen: the link is the live hive, not a backup
        raise HiveCommitFailed(f"{guest_path}: replacing the hive failed ({exc}); if the hive is damaged, "
                               f"restore it from {backup}") from exc


def _permission_warnings(guest: Guest, original: str, staged: str) -> tuple[str, ...]:
    try:
        if guest.xattr(original, NTFS_ACL_XATTR) == guest.xattr(staged, NTFS_ACL_XATTR):
            return ()
    except RuntimeError as exc:
        if "not supported" in str(exc):     # FAT (a BCD on the ESP) has no permissions to lose
            return ()
        raise
    return (f"{original} now has the NTFS permissions ntfs-3g gives new files (Everyone: full control) instead "
            "of its own, which libguestfs cannot copy; prepare stages a first-boot action that puts the original "
            "back (restore-acl-*), and the backup keeps the original permissions",)


def _same_file(guest: Guest, a: str, b: str) -> bool:
    try:
        return guest.inode(a)[0] == guest.inode(b)[0]
    except RuntimeError:
        return False


def _expect_checksum(guest: Guest, path: str, sha256: str) -> None:
    found = guest.checksum(path, "sha256")
    if found != sha256:
        raise HiveCommitFailed(f"{path}: sha256 {found} after writing, expected {sha256}")


def _remove_quietly(guest: Guest, path: str) -> None:
    try:
        guest.remove(path, missing_ok=True)
    except RuntimeError:
        pass


def _default_backup_dir(guest_path: str) -> str:
    return posixpath.join(posixpath.dirname(guest_path), BACKUP_DIR_NAME)


def _utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
