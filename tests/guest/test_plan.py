"""plan -> apply on a writable copy of a sample image: the plan changes nothing, apply does exactly the plan,
and the hives read back (hivex and regipy) hold the exact new values."""
from __future__ import annotations

import json

import pytest
from regipy.registry import RegistryHive

from ce import registry
from ce.plan import FileWrite, Plan, Planner, RegistrySet, apply, hive_path
from ce.registry import Hive, RegType
from tests.support.appliance import writable_windows

pytestmark = pytest.mark.slow
PVS = "win2019-vda2203-pvs"
CCS = "ControlSet002"                     # the sample's current control set
RDP = rf"{CCS}\Control\Terminal Server"


@pytest.fixture(scope="module")
def session(samples, tmp_path_factory):
    """A qcow2 child of the sample (the sample itself is never written), opened read-write in one appliance."""
    work = tmp_path_factory.mktemp("plan")
    with writable_windows(samples[PVS], work) as (guest, root):
        yield guest, root, work


def read_back(guest, root, hive, tmp):
    return registry.download_hive(guest, hive_path(guest, root, hive), tmp)


def make_plan(guest, root, work):
    payload = work / "setup.cmd"
    payload.write_bytes(b"@echo off\r\nrem staged by ce\r\n")
    planner = Planner("test", guest, root, work)
    try:
        planner.set("SYSTEM", RDP, "fDenyTSConnections", RegType.DWORD, 0, reason="enable RDP")
        planner.set("SYSTEM", rf"{CCS}\Services\storvsc", "Start", RegType.DWORD, 0, reason="boot-start")
        planner.set("SYSTEM", rf"{CCS}\Services\Tcpip\Parameters", "Hostname", RegType.SZ, "PVS-SRV19-GOLD")
        planner.set("SOFTWARE", r"Citrix\VirtualDesktopAgent", "ListOfDDCs", RegType.SZ, "a.example.com b.example.com")
        planner.set("SOFTWARE", r"Citrix\CE\Test", "Multi", RegType.MULTI_SZ, ["x", "ü"])
        planner.set("SOFTWARE", r"Citrix\CE\Test", "Blob", RegType.BINARY, b"\x00\x01\xff")
        planner.delete_value("SOFTWARE", r"Citrix\VirtualDesktopAgent", "FarmGUID")
        planner.delete_value("SOFTWARE", r"Citrix\VirtualDesktopAgent", "NoSuchValue")
        planner.write_file(r"C:\Program Files\Citrix\CE\setup.cmd", payload, reason="first boot")
        return planner.plan
    finally:
        planner.close()


def test_plan_lists_exact_changes_and_changes_nothing(session):
    guest, root, work = session
    system_before = guest.g.checksum("sha256", hive_path(guest, root, "SYSTEM"))
    plan = make_plan(guest, root, work)
    kinds = [(c.kind, getattr(c, "name", getattr(c, "path", ""))) for c in plan.changes]
    assert kinds == [("registry_set", "fDenyTSConnections"), ("registry_set", "Start"),
                     ("registry_set", "ListOfDDCs"), ("registry_set", "Multi"), ("registry_set", "Blob"),
                     ("registry_delete_value", "FarmGUID"), ("file_write", r"C:\Program Files\Citrix\CE\setup.cmd")]
    deny, start = plan.changes[0], plan.changes[1]
    assert deny.old == {"type": "REG_DWORD", "value": 1} and deny.new == {"type": "REG_DWORD", "value": 0}
    assert start.old == {"type": "REG_DWORD", "value": 3} and start.new == {"type": "REG_DWORD", "value": 0}
    assert plan.changes[2].old is None                      # the PVS sample discovers controllers by FarmGUID
    report = json.loads(plan.model_dump_json())
    assert "source" not in report["changes"][-1]           # local paths stay out of reports
    assert guest.g.checksum("sha256", hive_path(guest, root, "SYSTEM")) == system_before
    assert not guest.exists(r"C:\Program Files\Citrix\CE\setup.cmd")


def test_apply_does_exactly_the_plan_and_replanning_finds_nothing(session, tmp_path):
    guest, root, work = session
    plan = make_plan(guest, root, work)
    result = apply(guest, root, plan, stamp="job1")
    assert result.error is None, result.error
    assert {o.status for o in result.outcomes} == {"applied"}
    system = read_back(guest, root, "SYSTEM", tmp_path)
    software = read_back(guest, root, "SOFTWARE", tmp_path)
    with Hive.open(system) as h:
        assert h.get_data(RDP, "fDenyTSConnections") == 0
        assert h.get_data(rf"{CCS}\Services\storvsc", "Start") == 0
        assert h.get_data(r"ControlSet001\Services\storvsc", "Start") == 3      # other control set untouched
    with Hive.open(software) as h:
        assert h.get_data(r"Citrix\VirtualDesktopAgent", "FarmGUID") is None
        assert h.get(r"Citrix\CE\Test", "Multi").type == RegType.MULTI_SZ
    reg = RegistryHive(str(software))
    assert reg.get_key(r"\Citrix\VirtualDesktopAgent").get_value("ListOfDDCs") == "a.example.com b.example.com"
    assert reg.get_key(r"\Citrix\CE\Test").get_value("Multi") == ["x", "ü"]
    assert RegistryHive(str(system)).get_key(rf"\{RDP}").get_value("fDenyTSConnections") == 0
    assert guest.read_file(r"C:\program files\citrix\ce\SETUP.CMD") == b"@echo off\r\nrem staged by ce\r\n"
    backups = {c["guestPath"]: c["backupPath"] for c in result.facts["commits"]}
    assert all(guest.g.is_file(b) for b in backups.values()) and len(backups) == 2
    assert not guest.g.glob_expand("/Windows/System32/config/*.ce-new")
    again = make_plan(guest, root, work)
    assert again.changes == []


def test_stale_plan_is_refused_and_writes_nothing(session, tmp_path):
    guest, root, work = session
    planner = Planner("test", guest, root, work)
    planner.set("SYSTEM", RDP, "fDenyTSConnections", RegType.DWORD, 1)
    plan = planner.plan
    planner.close()
    before = guest.g.checksum("sha256", hive_path(guest, root, "SYSTEM"))
    stale = Plan(step="test", changes=[plan.changes[0].model_copy(update={"old": {"type": "REG_DWORD", "value": 7}})])
    result = apply(guest, root, stale)
    assert result.error["code"] == "image_changed_since_plan"
    assert [o.status for o in result.outcomes] == ["not_attempted"]
    assert guest.g.checksum("sha256", hive_path(guest, root, "SYSTEM")) == before


def test_bad_data_is_refused_at_plan_time(session):
    guest, root, work = session
    planner = Planner("test", guest, root, work)
    with pytest.raises(ValueError):
        planner.set("SYSTEM", RDP, "fDenyTSConnections", RegType.DWORD, -1)
    planner.close()
    assert RegistrySet.model_validate({"hive": "SYSTEM", "key": "k", "name": "n",
                                       "new": {"type": "REG_SZ", "value": "v"}}).type == "REG_SZ"
    assert FileWrite.model_fields["source"].exclude
