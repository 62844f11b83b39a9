"""Errors a person can act on.

Every failure ce reports carries a stable machine-readable ``code`` (the connector and the tests match on it)
and one human sentence saying what is wrong and what to do. Nothing else should escape to a user as a traceback.
"""
from __future__ import annotations

from contextlib import contextmanager


class CeError(Exception):
    """Base class: ``code`` is stable, ``message`` is one actionable line."""

    code = "ce_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


@contextmanager
def naming_field(field: str):
    """A refusal raised inside is about the request field ``field`` (the server reports it as ``error.field``)."""
    try:
        yield
    except CeError as exc:
        if getattr(exc, "field", None) is None:
            exc.field = field
        raise


class DiskError(CeError):
    code = "disk_error"


class DiskNotFound(DiskError):
    code = "disk_not_found"


class DiskUnreadable(DiskError):
    """The file is not a usable disk image (truncated, corrupt header, wrong format)."""
    code = "disk_unreadable"


class EmptyDisk(DiskError):
    code = "disk_empty"


class GuestError(CeError):
    code = "guest_error"


class ApplianceError(GuestError):
    code = "appliance_failed"


class GuestTimeout(GuestError):
    code = "guest_timeout"


class NotWindows(GuestError):
    code = "not_windows"


class MultipleWindowsRoots(GuestError):
    code = "multiple_windows_roots"


class HibernatedVolume(GuestError):
    code = "ntfs_hibernated"


class UncleanVolume(GuestError):
    code = "ntfs_unclean"


class BitLockerVolume(GuestError):
    code = "bitlocker_encrypted"


class RegistryError(CeError):
    code = "registry_error"


class HiveCorrupt(RegistryError):
    code = "hive_corrupt"


class HiveDirty(RegistryError):
    code = "hive_dirty"


class HiveMissing(RegistryError):
    code = "hive_missing"


class HiveCommitFailed(RegistryError):
    code = "hive_commit_failed"
