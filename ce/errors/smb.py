"""SMB errors: shares, their accounts, files on them and transfers to and from them.

Statuses: what the job can fix (its location, account or path) keeps the default 422; a name that is taken is a 409
conflict; a share that is full is 507; the share or the network failing is 5xx (503 unreachable, 502 any other
failure of the share or of a transfer). A canceled transfer raises ``ce.errors.Canceled``.
"""
from __future__ import annotations

from .base import CeError


class SmbError(CeError):
    code = "smb_error"
    status = 502
    action = "the share refused or failed the operation named in the message (e.g. a file in use): fix it and retry"


class SmbUnreachable(SmbError):
    code = "smb_unreachable"
    status = 503
    action = "check the share's host name and port and the network or firewall between the CE and it, then retry"


class SmbAuthFailed(SmbError):
    code = "smb_auth_failed"
    status = 422
    action = "check the share's user name, password and domain in the job's storage location"


class ShareNotFound(SmbError):
    code = "smb_share_not_found"
    status = 422
    action = "check the share name in the job's storage location"


class SmbAccessDenied(SmbError):
    code = "smb_access_denied"
    status = 422
    action = "give the job's SMB account read and write permission on the share and the folder"


class SmbPathRefused(SmbError):
    code = "smb_path_refused"
    status = 422
    action = "give a plain path relative to the location's folder (no '..', drive letter, UNC prefix or device name)"


class RemoteNotFound(SmbError):
    code = "smb_not_found"
    status = 422
    action = "check the folder and file names in the job's storage location (create the folder first)"


class RemoteExists(SmbError):
    code = "smb_exists"
    status = 409
    action = "allow overwriting in the job or choose another file name"


class ShareFull(SmbError):
    code = "smb_share_full"
    status = 507
    action = "free space on the share or choose another storage location"


class TransferFailed(SmbError):
    code = "smb_transfer_failed"
    status = 502
    action = "retry the step; if it fails again check the share and the local file or disk named in the message"


class SmbPortRefused(SmbError):
    code = "smb_port_refused"
    status = 422
    action = "use an SMB port the service allows: 445, or one its bootstrap lists in smb_ports"
