"""Registry errors: offline hives read and written with hivex."""
from __future__ import annotations

from .base import CeError


class RegistryError(CeError):
    code = "registry_error"
    action = "a hive could not be read or written: the message names the hive and key"


class HiveCorrupt(RegistryError):
    code = "hive_corrupt"
    action = "the hive is damaged: repair the image in Windows (or restore the hive from its backup)"


class HiveDirty(RegistryError):
    code = "hive_dirty"
    action = "boot Windows and shut it down once so that its pending registry transactions are written"


class HiveMissing(RegistryError):
    code = "hive_missing"
    action = "the Windows installation lacks a hive: the image is incomplete or not a system disk"


class HiveCommitFailed(RegistryError):
    code = "hive_commit_failed"
    status = 500
    action = "the hive was not replaced (the old one is intact): retry; collect diagnostics if it recurs"


class RegistryKeyMissing(RegistryError):
    code = "registry_key_missing"
    action = ("a key the operation reads is missing from the hive (the message names it): the image is not the "
              "Windows installation the job expects, or its registry is damaged")


class UnsupportedEdit(RegistryError):
    """An edit hivex would perform in a way Windows cannot read back."""
    code = "registry_unsupported_edit"
    action = ("the edit would make hivex rewrite a value larger than it can store in a form Windows reads: make "
              "this change in Windows instead")


class RegFileUnwritable(RegistryError):
    code = "reg_file_unwritable"
    action = "give --reg-diff a file name in an existing directory ce can write to; the step was not run"
