"""convertToUefi errors: what MBR2GPT refuses about a disk or its Windows, and a BCD template ce will not build on.
Every refusal comes before anything is written."""
from __future__ import annotations

from .base import CeError


class UefiConversionRefused(CeError):
    code = "uefi_conversion_refused"
    action = "the disk cannot be converted to GPT/UEFI as it is: the message names the rule it breaks"


class AlreadyUefi(UefiConversionRefused):
    code = "already_uefi"
    action = "the disk is GPT already: use it as it is (convertToUefi converts BIOS/MBR disks only)"


class TooManyPartitions(UefiConversionRefused):
    code = "uefi_too_many_partitions"
    action = "MBR2GPT converts disks with at most three primary partitions: remove one in Windows, then retry"


class ExtendedPartitions(UefiConversionRefused):
    code = "uefi_extended_partitions"
    action = "the disk has extended/logical partitions, which MBR2GPT cannot convert: remove them in Windows"


class DynamicDisk(UefiConversionRefused):
    code = "uefi_dynamic_disk"
    action = "the disk is dynamic (LDM): convert it back to a basic disk in Windows (only possible when empty)"


class NoSystemPartition(UefiConversionRefused):
    code = "uefi_no_system_partition"
    action = "the MBR has no active (system) partition: mark the partition Windows boots from active, then retry"


class UnknownPartitionType(UefiConversionRefused):
    code = "uefi_unknown_partition_type"
    action = "a partition has an MBR type MBR2GPT does not map (the message names it): remove it or map its type"


class NoRoomForGpt(UefiConversionRefused):
    code = "uefi_no_room"
    action = ("the GPT or the EFI system partition does not fit without moving a partition: allow the output disk "
              "to grow, or shrink the Windows partition in Windows first")


class InvalidPartitionTable(UefiConversionRefused):
    code = "uefi_invalid_partition_table"
    action = "the MBR's partitions overlap or lie outside the disk: repair the partition table in Windows"


class UefiUnsupportedWindows(UefiConversionRefused):
    code = "uefi_unsupported_windows"
    action = ("UEFI conversion needs 64-bit Windows 10 / Server 2016 or later: use an image of one of them "
              "(BitLocker and a missing Windows are refused as bitlocker_encrypted and not_windows)")


class BcdTemplateUnusable(UefiConversionRefused):
    code = "bcd_template_unusable"
    action = ("the image's Windows\\System32\\config\\BCD-Template is missing, dirty or damaged: repair Windows "
              "(sfc /scannow) or boot and shut it down once, then retry")
