"""What the SMB stack needs of smbprotocol beyond its calls: NTSTATUS groups and names, access masks, unpacking a
response, closing quietly, and short failure reasons built from codes only (never with a user name in them)."""
from __future__ import annotations

import logging

from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBException, SMBResponseException
from smbprotocol.file_info import FileEndOfFileInformation
from smbprotocol.header import NtStatus
from smbprotocol.open import DirectoryAccessMask, FilePipePrinterAccessMask, Open, ShareAccess

log = logging.getLogger("ce.smb")

STATUS_QUOTA_EXCEEDED = 0xC0000044            # NTSTATUS values smbprotocol's NtStatus does not name follow
ACCOUNT_REFUSED = {0xC000006E: "STATUS_ACCOUNT_RESTRICTION", 0xC000006F: "STATUS_INVALID_LOGON_HOURS",
                   0xC0000070: "STATUS_INVALID_WORKSTATION", 0xC0000072: "STATUS_ACCOUNT_DISABLED",
                   0xC0000193: "STATUS_ACCOUNT_EXPIRED", 0xC0000224: "STATUS_PASSWORD_MUST_CHANGE",
                   0xC0000234: "STATUS_ACCOUNT_LOCKED_OUT"}
AUTH_STATUSES = {NtStatus.STATUS_LOGON_FAILURE, NtStatus.STATUS_WRONG_PASSWORD, NtStatus.STATUS_PASSWORD_EXPIRED,
                 *ACCOUNT_REFUSED}
NOT_FOUND_STATUSES = {NtStatus.STATUS_OBJECT_NAME_NOT_FOUND, NtStatus.STATUS_OBJECT_PATH_NOT_FOUND,
                      NtStatus.STATUS_NO_SUCH_FILE}
FULL_STATUSES = {NtStatus.STATUS_DISK_FULL, STATUS_QUOTA_EXCEEDED}
SPARSE_UNSUPPORTED = {NtStatus.STATUS_INVALID_DEVICE_REQUEST, NtStatus.STATUS_NOT_SUPPORTED,
                      NtStatus.STATUS_INVALID_PARAMETER}
STATUS_NAMES = {**{value: name for name, value in vars(NtStatus).items() if name.startswith("STATUS_")},
                **ACCOUNT_REFUSED, STATUS_QUOTA_EXCEEDED: "STATUS_QUOTA_EXCEEDED"}

SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
READ_ATTRIBUTES = FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
FILE_READ = FilePipePrinterAccessMask.GENERIC_READ
FILE_WRITE = (FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE
              | FilePipePrinterAccessMask.DELETE)
DELETE = FilePipePrinterAccessMask.DELETE | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
LIST_DIR = DirectoryAccessMask.FILE_LIST_DIRECTORY | DirectoryAccessMask.FILE_READ_ATTRIBUTES


def unpack(response_class, response):
    message = response_class()
    message.unpack(response["data"].get_value())
    return message


def end_of_file(size: int) -> FileEndOfFileInformation:
    info = FileEndOfFileInformation()
    info["end_of_file"] = size
    return info


def close_quietly(handle: Open) -> None:
    try:
        handle.close()
    except (SMBException, OSError, ValueError) as exc:
        log.debug("ignoring an error while closing %s: %s", handle.file_name, type(exc).__name__)


def disconnect_quietly(connection: Connection) -> None:
    try:
        connection.disconnect(close=False)
    except Exception:           # whatever broke the connection may break its disconnect too
        pass


def reason(exc: BaseException) -> str:
    """A short cause built from codes only, so it cannot carry credentials (spnego's texts may name the user)."""
    if isinstance(exc, SMBResponseException):
        return status_name(exc.status)
    cause = exc if isinstance(exc, OSError) else exc.__cause__      # smbprotocol wraps socket errors in ValueError
    if isinstance(cause, TimeoutError) or "timeout" in str(exc).lower():
        return "timed out"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return type(exc).__name__


def status_name(status: int) -> str:
    return f"{STATUS_NAMES.get(status, 'status')} (0x{status:08x})"
