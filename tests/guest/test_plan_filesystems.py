"""Guest changes beyond System32\\config: a hive and a file on the ESP (a FAT filesystem of the same disk) planned and
applied in one plan with a Windows hive, with the same discipline -- checked against the plan, committed verified,
backed up (a copy on FAT, which has no hard links) -- and the Windows volume mounted back afterwards."""
from __future__ import annotations

import pytest
from regipy.registry import RegistryHive

from ce import registry
from ce.plan import Planner, apply, hive_path
from ce.registry import Hive, RegType, create_empty_hive
from tests.support.appliance import writable_windows

pytestmark = pytest.mark.slow
UEFI_SAMPLE = "win2019-vda2203-pvs"
BCD = "/EFI/Microsoft/Boot/BCD"
BOOTMGR = r"Objects\{9dea862c-5cdd-4e70-acc1-f32b344d4795}\Elements\23000003"   # bootmgr's default entry
ENTRY = "{6a3f1b38-2d6e-4b0a-9a1f-0d6b9c1e5a10}"


@pytest.fixture(scope="module")
def session(samples, tmp_path_factory):
    """A writable child of a UEFI sample in one appliance, with a small BCD-shaped hive placed on its ESP."""
    work = tmp_path_factory.mktemp("filesystems")
    bcd = create_empty_hive(work / "BCD", root_name="NewStoreRoot")
    with Hive.open(bcd, write=True) as hive:
        hive.set(BOOTMGR, "Element", RegType.SZ, "{0ce4991b-e6b3-4b16-b23c-5e0d9250e5d9}")
        hive.commit(bcd)
    with writable_windows(samples[UEFI_SAMPLE], work) as (guest, root):
        esp = next(fs.device for fs in guest.filesystems() if fs.role == "efi-system")
        with guest.on_filesystem(esp):
            guest.make_dirs("/EFI/Microsoft/Boot")
            guest.upload(bcd, BCD)
        yield guest, root, esp, work


def plan_both(guest, root, esp, work):
    loader = work / "ce-loader.txt"
    loader.write_bytes(b"staged on the ESP by ce\n")
    planner = Planner("test", guest, root, work)
    try:
        planner.set(BCD, BOOTMGR, "Element", RegType.SZ, ENTRY, reason="boot the new entry", filesystem=esp)
        planner.set(BCD, rf"Objects\{ENTRY}\Elements\12000004", "Element", RegType.SZ, "Windows (ce)",
                    filesystem=esp)
        planner.set("SOFTWARE", r"Citrix\CE\Test", "Esp", RegType.DWORD, 1)
        planner.write_file("/EFI/ce/loader.txt", loader, filesystem=esp)
        return planner.plan
    finally:
        planner.close()


def test_hive_and_file_on_the_esp_beside_a_windows_hive(session, tmp_path):
    guest, root, esp, work = session
    plan = plan_both(guest, root, esp, work)
    described = [c.describe() for c in plan.changes]
    assert any(line.startswith(f"set    {esp}:{BCD}\\") for line in described), described
    assert any(line.startswith(f"write  {esp}:/EFI/ce/loader.txt") for line in described), described
    old_bcd = plan.changes[0].old
    assert old_bcd == {"type": "REG_SZ", "value": "{0ce4991b-e6b3-4b16-b23c-5e0d9250e5d9}"}

    result = apply(guest, root, plan, stamp="20261201T000000Z")
    assert result.error is None and {o.status for o in result.outcomes} == {"applied"}
    commits = {c["guestPath"]: c for c in result.facts["commits"]}
    assert set(commits) == {BCD, hive_path(guest, root, "SOFTWARE")}
    assert guest.exists(r"C:\Windows\System32\config\SOFTWARE")      # the Windows volume is mounted back

    with guest.on_filesystem(esp):
        local = registry.download_hive(guest, BCD, tmp_path)
        backup = commits[BCD]["backupPath"]
        assert commits[BCD]["backupCreated"] and guest.is_file(backup)
        assert guest.read_bytes(backup) == (work / "BCD").read_bytes()        # the pristine hive, byte for byte
        assert guest.read_bytes("/EFI/ce/loader.txt") == b"staged on the ESP by ce\n"
        assert not [n for n in guest.listdir("/EFI/Microsoft/Boot") if n.endswith((".ce-new", ".ce-copy"))]
    with Hive.open(local) as hive:
        assert hive.get_data(BOOTMGR, "Element") == ENTRY
        assert hive.get_data(rf"Objects\{ENTRY}\Elements\12000004", "Element") == "Windows (ce)"
    values = {v.name: v.value for v in RegistryHive(str(local)).get_key(f"\\{BOOTMGR}").iter_values()}
    assert values == {"Element": ENTRY}                                 # an independent reader agrees

    again = plan_both(guest, root, esp, work)                           # applied: planning again changes nothing
    assert again.changes == []
