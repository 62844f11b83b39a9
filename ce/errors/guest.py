"""Guest errors: the libguestfs appliance, what it finds (or refuses) on the attached disk, and what prepare
refuses about the Windows installation it finds there."""
from __future__ import annotations

from .base import CeError
from .disk import EmptyDisk


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


class BlankDisk(EmptyDisk):
    """No partition table and no filesystem: a new or wiped disk, not an image's system disk."""
    code = "disk_blank"
    action = "attach the image's system disk, not a new or wiped one"


class DiskReadOnly(CeError):
    code = "disk_read_only"
    action = "attach the disk writable (file, device and mount), or run the step with dryRun"


class WindowsUnsupported(CeError):
    code = "windows_unsupported"
    action = "prepare supports the Windows releases the message lists: use an image of one of them"


class NotImplementedYet(CeError):
    code = "not_implemented"
    action = "leave out the prepare option the message names: this version of ce cannot apply it yet"


class VdaMissing(CeError):
    code = "vda_missing"
    action = "install the Citrix VDA in the image first, or leave out installMisa / installMcsio"


class PvsDowngradeRefused(CeError):
    code = "pvs_downgrade_refused"
    action = "ask for the installed Citrix Provisioning target device version or a newer one: ce never downgrades it"


class DriverMissing(CeError):
    code = "driver_missing"
    action = "add the driver the message names (driver/<service>, the image's architecture) to the payload store"


class WindowsTooOld(CeError):
    code = "windows_too_old"
    action = "the target platform needs Windows 8 / Server 2012 or newer: use a newer image"


class VmSkuUnsupported(CeError):
    code = "vm_sku_unsupported"
    action = ("choose an Azure VM size with a local temporary disk for ceVmSku (the default Standard_D2s_v3, or a "
              "size with 'd' in its features such as Standard_D4ds_v6)")


class VmSkuNeedsUefi(CeError):
    code = "vm_sku_needs_uefi"
    action = ("the VM size boots Generation 2 (UEFI) only and the image boots BIOS/MBR: convert it first "
              "(convertToUefi), or choose a size that also runs Generation 1 VMs (e.g. Standard_D2s_v3)")


class PartitionTableFailed(GuestError):
    code = "partition_table_failed"
    status = 500
    action = "the partition table was not replaced (the old one was put back, see the message): run the step again"


class BootConfigMissing(GuestError):
    code = "boot_config_missing"
    action = ("inspect found no boot partition, no BCD store on it, or a store with no boot entries: the disk does "
              "not boot as it is; on a running copy run bcdboot C:\\Windows (or convertToUefi for a BIOS disk)")


class BootConfigUnreadable(GuestError):
    code = "boot_config_unreadable"
    action = ("the boot partition or its BCD store cannot be read (damaged, or not a BCD): repair it on a running "
              "copy (bcdboot C:\\Windows rebuilds the store)")


class BootConfigMismatch(GuestError):
    code = "boot_config_mismatch"
    action = ("the BCD's default entry does not boot the Windows inspect found, or is for the other firmware "
              "(winload.efi on BIOS/MBR, winload.exe on UEFI/GPT): check the message, then fix it with bcdboot")
