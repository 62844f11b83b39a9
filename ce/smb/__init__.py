"""SMB2/3 file shares through smbprotocol: the byte path for exports, publishes and reverse images.

The CE cannot rely on the kernel (no CIFS mount in the sandbox) nor on qemu-img (no smb:// driver), so every byte to
or from a share goes through this package. Each ``SmbShare`` owns its own connection, session and tree: nothing is
registered process-wide, so two jobs never share credentials.

Rules this package enforces:

* Every remote path is relative to the location's folder; ``..``, absolute paths, drive letters, UNC prefixes,
  control characters, alternate data streams, wildcards and reserved device names are refused (``SmbPathRefused``).
* Uploads go to ``NAME.partial`` and are renamed to ``NAME`` only after the size on the share was verified; a
  failure or a cancel (``ce.errors.Canceled``) deletes the partial file. The share's free space is checked before
  the first byte is sent. What a lost connection or a killed process leaves is resumed by the next upload with the
  same ``ResumeKey`` (``resume``: what is there is read back and compared, only the rest is sent).
* Uploads skip the holes of sparse local files (SEEK_DATA / SEEK_HOLE) and all-zero chunks, and mark the remote
  file sparse, so a half-empty disk does not send (or store) its empty half.
* Neither the user name nor the password ever appears in an error message or a log line.
* A step run by the server connects only to the ports its bootstrap allows (``smb_ports``, default 445;
  ``SmbPortRefused``), and a server it cannot reach reads the same whatever the cause (``SmbUnreachable``), so
  steps cannot be used to scan ports.

Modules, from the job's view down to the wire: ``target`` (``StorageLocation``, the location as a job gives it),
``location`` (``SmbLocation``, ``Credentials``), ``ports`` (the ports a step may connect to), ``paths``
(``normalize_path`` and Windows' name rules), ``share`` (``SmbShare``: queries, changes, uploads, downloads),
``resume`` (``NAME.partial.ce-resume``, reusing an earlier attempt), ``reader`` (``RemoteReader``), ``session``
(connection, sign-in, credits, request plumbing, error mapping), ``compound`` (an open file's requests in one round
trip), ``pipeline`` (requests in flight, chunk sizes), ``protocol`` (NTSTATUS groups, access masks) and ``wire``
(WRITE requests framed and signed in one buffer). The errors live in ``ce.errors`` (``ce/errors/smb.py``) and are
re-exported here.
"""
from __future__ import annotations

import importlib

from ..errors import (RemoteExists, RemoteNotFound, ShareFull, ShareNotFound, SmbAccessDenied, SmbAuthFailed, SmbError,
                      SmbPathRefused, SmbPortRefused, SmbUnreachable, TransferFailed)
from .location import Credentials, SmbLocation
from .paths import normalize_path
from .target import SmbCredentials, StorageLocation

# the byte path (smbprotocol, cryptography) is imported on first use: a command that only parses its params does
# not pay for it (ce --help)
_ON_FIRST_USE = {"Progress": "pipeline", "RemoteReader": "reader", "CONNECT_TIMEOUT": "session",
                 "DEFAULT_PORT": "session", "RemoteStat": "session", "PARTIAL_SUFFIX": "share", "SmbShare": "share"}


def __getattr__(name: str):
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_ON_FIRST_USE[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["CONNECT_TIMEOUT", "DEFAULT_PORT", "PARTIAL_SUFFIX", "Credentials", "Progress", "RemoteExists",
           "RemoteNotFound", "RemoteReader", "RemoteStat", "ShareFull", "ShareNotFound", "SmbAccessDenied",
           "SmbAuthFailed", "SmbCredentials", "SmbError", "SmbLocation", "SmbPathRefused", "SmbPortRefused",
           "SmbShare", "SmbUnreachable", "StorageLocation", "TransferFailed", "normalize_path"]
