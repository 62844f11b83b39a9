"""Guest errors: the libguestfs appliance and what it finds (or refuses) on the attached disk."""
from __future__ import annotations

from .base import CeError


class GuestError(CeError):
    code = "guest_error"
    action = "the appliance could not read or write the disk: the message names the operation"


class ApplianceError(GuestError):
    code = "appliance_failed"
    status = 500
    action = "the libguestfs appliance did not start: retry once; if it fails again collect diagnostics"


class GuestTimeout(GuestError):
    code = "guest_timeout"
    action = "the appliance took longer than the step's timeout: raise timeout or retry"


class NotWindows(GuestError):
    code = "not_windows"
    action = "the disk holds no Windows installation: attach the golden image's system disk"


class MultipleWindowsRoots(GuestError):
    code = "multiple_windows_roots"
    action = "give root: the device of the Windows installation to work on"


class HibernatedVolume(GuestError):
    code = "ntfs_hibernated"
    action = "boot Windows and shut it down fully (no hibernation, no Fast Startup), then retry"


class UncleanVolume(GuestError):
    code = "ntfs_unclean"
    action = "boot Windows and shut it down cleanly (or run chkdsk), then retry"


class BitLockerVolume(GuestError):
    code = "bitlocker_encrypted"
    action = "decrypt the volume in Windows (manage-bde -off) before moving the image"
