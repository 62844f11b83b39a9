"""Windows Boot Configuration Data stores, offline: the names in a store (``elements``), the partition device blob
(``device``), building the UEFI store bcdboot would write from an image's BCD-Template (``store``), and reading the
boot entries of any store for inspect (``entries``)."""
from .device import decode_device, encode_gpt_partition, encode_mbr_partition
from .elements import object_rows
from .entries import BootEntry, read_boot_entries
from .store import UefiStoreSummary, build_uefi_store, store_rows

__all__ = ["BootEntry", "UefiStoreSummary", "build_uefi_store", "decode_device", "encode_gpt_partition",
           "encode_mbr_partition", "object_rows", "read_boot_entries", "store_rows"]
