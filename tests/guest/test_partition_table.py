"""Partition-table changes: an MBR disk's table replaced by a GPT one in place (the partitions' contents untouched),
read back by ce and checked by an independent reader (sgdisk -v); a failing write puts the old sectors back, and a
table that changed since the plan is refused before anything is written."""
from __future__ import annotations

import subprocess

import pytest

from ce.changes import PartitionTableWrite, Plan
from ce.guest import partition_parent, partitions
from ce.guest.partitions import PartitionEntry, PartitionTable
from ce.plan import Planner, apply
from tests.support.appliance import writable_windows

pytestmark = pytest.mark.slow
MBR_SAMPLE = "win2016-vda1912"
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
DISK_GUID = "5B4E8C52-3A0D-4F6E-9C1B-2D7A8E9F0A11"


@pytest.fixture(scope="module")
def session(samples, tmp_path_factory):
    """A writable child of the BIOS/MBR sample in one appliance (the sample itself is never written)."""
    work = tmp_path_factory.mktemp("partitions")
    with writable_windows(samples[MBR_SAMPLE], work) as (guest, root):
        yield guest, root, partition_parent(root.device), work


def as_gpt(table: PartitionTable) -> PartitionTable:
    return PartitionTable(label="gpt", disk_guid=DISK_GUID, partitions=[
        PartitionEntry(number=p.number, start=p.start, end=p.end, type=BASIC_DATA,
                       guid=f"0CE00000-0000-4000-8000-00000000000{p.number}", name=f"part{p.number}")
        for p in table.partitions])


def sgdisk_verify(guest, device, tmp_path) -> str:
    """sgdisk -v over a sparse copy of the disk's table sectors (the partitions' contents do not matter to it)."""
    saved = partitions.read_sectors(guest, device)
    copy = tmp_path / "table.raw"
    with open(copy, "wb") as f:
        f.truncate(saved.tail_offset + len(saved.tail))
        f.write(saved.head)
        f.seek(saved.tail_offset)
        f.write(saved.tail)
    return subprocess.run(["sgdisk", "-v", str(copy)], capture_output=True, text=True, check=True).stdout


def test_mbr_replaced_by_gpt_in_place(session, tmp_path):
    guest, root, device, work = session
    old = partitions.read_table(guest, device)
    assert old.label == "msdos" and len(old.partitions) == 2
    mbr = partitions.read_sectors(guest, device).head[:512]
    new = as_gpt(old)
    planner = Planner("test", guest, root, work)
    planner.replace_partition_table(device, new, reason="MBR to GPT")
    planner.close()
    (change,) = planner.plan.changes
    assert change.describe() == f"replace {device}'s partition table (MBR, 2 partition(s)) with GPT, 2 partition(s)"

    result = apply(guest, root, planner.plan)
    assert result.error is None and [o.status for o in result.outcomes] == ["applied"]
    assert partitions.read_table(guest, device) == new
    assert "No problems found" in sgdisk_verify(guest, device, tmp_path)
    assert guest.exists(r"C:\Windows\System32\config\SYSTEM")       # mounted back, its contents where they were
    backup = guest.read_bytes(change.backup)
    assert backup[:512] == mbr and backup[510:512] == b"\x55\xaa"
    assert len(backup) == (partitions.HEAD_SECTORS + partitions.TAIL_SECTORS) * 512

    again = Planner("test", guest, root, work)                       # applied: planning again changes nothing
    again.replace_partition_table(device, new)
    assert again.plan.changes == []


def test_a_failing_write_puts_the_old_table_back(session):
    guest, root, device, work = session
    old = partitions.read_table(guest, device)
    first, second = old.partitions[:2]
    overlapping = old.model_copy(update={"partitions": [first, second.model_copy(update={"start": first.start})]})
    change = PartitionTableWrite(device=device, old=old, new=overlapping, backup="/Windows/ce-backup/never")
    result = apply(guest, root, _plan(change))
    assert result.error["code"] == "partition_table_failed" and "old table was put back" in result.error["message"]
    assert [o.status for o in result.outcomes] == ["failed"]
    assert partitions.read_table(guest, device) == old
    assert guest.exists(r"C:\Windows\System32\config\SYSTEM") and not guest.path_exists("/Windows/ce-backup/never")


def test_a_table_changed_since_the_plan_is_refused(session):
    guest, root, device, work = session
    current = partitions.read_table(guest, device)
    stale = current.model_copy(update={"disk_guid": "00000000-0000-4000-8000-000000000000"})
    change = PartitionTableWrite(device=device, old=stale, new=as_gpt(current), backup="/Windows/ce-backup/never")
    result = apply(guest, root, _plan(change))
    assert result.error["code"] == "image_changed_since_plan"
    assert partitions.read_table(guest, device) == current


def _plan(*changes) -> Plan:
    return Plan(step="test", changes=list(changes))
