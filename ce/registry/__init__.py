"""Offline Windows registry hives: typed values, hivex editing, and verified, atomic commits into an image.

Every feature that touches the registry goes through this package, so hivex's quirks are handled once here:

- its Python binding raises ``RuntimeError("Success")`` for a missing value, and a failed ``Hivex()`` prints an
  ``AttributeError`` from ``__del__``; its errors say only ``strerror`` (we check the header ourselves first);
- its name lookups are case-insensitive for ASCII only (Windows folds all of Unicode);
- it cannot create a hive, replay transaction logs, or write big-data (``db``) values: it stores a value larger
  than 16344 bytes in one cell, which Windows (hive format 1.4+) then misreads as a ``db`` record. So ``set`` and
  ``delete_value`` refuse any edit that would make hivex write such a value (see ``Hive._refuse_big_values``).

Paths are backslash-separated, relative to the hive root and case-insensitive; value name ``""`` is the key's
default value.

Modules: ``values`` (REG_* types and their encoding), ``header`` (the base block, checked before hivex opens a
file), ``hive`` (``Hive``, the hivex handle), ``replay`` (``verify_changes``), ``empty`` (``create_empty_hive``),
``commit`` (``download_hive`` / ``cleanup_stale`` / ``commit_hive`` through a ``ce.guest.Guest``). Import the
names from ``ce.registry``; the errors live in ``ce.errors`` (``RegistryKeyMissing`` and ``UnsupportedEdit`` are
re-exported here too).
"""
from __future__ import annotations

from ..errors import RegistryKeyMissing, UnsupportedEdit
from .commit import (
    BACKUP_DIR_NAME, NTFS3G_RENAME_INFIX, NTFS_ACL_XATTR, STAGED_SUFFIX, CommitResult, cleanup_stale, commit_hive,
    download_hive,
)
from .empty import create_empty_hive
from .header import (
    BASE_BLOCK_SIZE, BIG_VALUE_LIMIT, CHECKSUM_OFFSET, HBIN_SIZE, MIN_HIVE_SIZE, HiveHeader, check_header,
    header_checksum,
)
from .hive import Change, Hive, current_control_set, fold_name, sha256_file, split_path
from .replay import verify_changes
from .values import RegType, RegValue, decode_value, encode_value, reg_type, type_name

__all__ = [
    "BACKUP_DIR_NAME", "BASE_BLOCK_SIZE", "BIG_VALUE_LIMIT", "CHECKSUM_OFFSET", "HBIN_SIZE", "MIN_HIVE_SIZE",
    "NTFS3G_RENAME_INFIX", "NTFS_ACL_XATTR", "STAGED_SUFFIX",
    "Change", "CommitResult", "Hive", "HiveHeader", "RegType", "RegValue", "RegistryKeyMissing", "UnsupportedEdit",
    "check_header", "cleanup_stale", "commit_hive", "create_empty_hive", "current_control_set", "decode_value",
    "download_hive", "encode_value", "fold_name", "header_checksum", "reg_type", "sha256_file", "split_path",
    "type_name", "verify_changes",
]
