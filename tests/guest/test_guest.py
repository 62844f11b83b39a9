"""Guest session mechanics that need no sample Windows image: timeouts, bad drives, acceleration choice."""
from __future__ import annotations

import pytest

from ce.errors import CeError, GuestError, GuestTimeout
from ce.appliance import choose_accel, qemu_children
from ce.guest import Drive, Guest, partition_parent, unescape


def test_accel_can_be_forced(monkeypatch):
    monkeypatch.setenv("CE_GUEST_ACCEL", "tcg")
    assert choose_accel() == "tcg"
    monkeypatch.setenv("CE_GUEST_ACCEL", "fast")
    with pytest.raises(CeError, match="auto, kvm or tcg"):
        choose_accel()


def test_partition_names_and_labels():
    assert partition_parent("/dev/sdb12") == "/dev/sdb"
    assert partition_parent("/dev/sdab3") == "/dev/sdab"
    assert unescape(r"System\ Reserved") == "System Reserved"


def test_missing_drive_is_a_clear_error(tmp_path):
    with pytest.raises(GuestError, match="cannot attach"):
        Guest([Drive(str(tmp_path / "nope.qcow2"), "qcow2")]).launch()


@pytest.mark.slow
def test_launch_timeout_stops_the_appliance_and_leaves_no_qemu(tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    before = qemu_children()
    with pytest.raises(GuestTimeout, match="did not finish within 3 s"):
        Guest([Drive(str(disk))], launch_timeout=3).launch()
    assert qemu_children() - before == set()


@pytest.mark.slow
def test_a_deadline_that_passes_before_qemu_starts_still_stops_the_launch(tmp_path):
    """On a loaded host libguestfs may still be building the appliance when the deadline comes: the qemu that
    starts afterwards is killed too (it used to be missed, and the launch ran on past its deadline)."""
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    before = qemu_children()
    with pytest.raises(GuestTimeout, match="starting the libguestfs appliance did not finish"):
        Guest([Drive(str(disk))], launch_timeout=0.01).launch()
    assert qemu_children() - before == set()


@pytest.mark.slow
def test_deadline_stops_a_slow_call_and_the_session_reports_it(tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    with Guest([Drive(str(disk))]) as guest:
        with pytest.raises(GuestTimeout, match="sleeping did not finish within 1 s"):
            with guest.deadline(1, "sleeping"):
                guest.g.sleep(30)
