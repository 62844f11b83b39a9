"""prepareAndPublish end to end, through `ce plan` / `ce run --job FILE`: a qcow2 child of the Server 2019 sample
(UEFI, control set 2) prepared for Azure on an NVMe-only size (ceVmSku Standard_D2ds_v6: stornvme from the payload
store, Start=0) and published to a real smbd as the PVS store; then a second child whose publish fails (the vDisk
exists, no overwrite) after its prepare ran.

Appliance launches (13-25 s each here): the dry run, the run, the failing run, and one read-only read-back of both
children. What is checked: the dry run lists both halves and changes nothing; the result holds the prepare result
and the publish result; the vDisk on the share has the prepared disk's contents (qemu-img compare, and the result's
md5 against a hash of the file on the share); the hive values prepare reported are in the image, read with hivex
and with regipy (stornvme written out literally); the failed result keeps what prepare changed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ce import disks, hashing, registry
from ce.guest import Drive, Guest
from ce.payloads import write_manifest
from ce.plan import hive_path
from ce.registry import RegType, sha256_file
from images.content import pe_stub
from tests.guest.test_prepare_platform import hivex_value, regipy_value
from tests.support.smbserver import PASSWORD, USER

pytestmark = pytest.mark.slow
CE = [sys.executable, "-m", "ce.cli"]
SAMPLE, CCS = "win2019-vda2203-pvs", "ControlSet002"
VDISK, SKU = "Win2019-D2ds", "Standard_D2ds_v6"
STORNVME = pe_stub("stand-in stornvme 10.0.17763.1") + b"\0" * 64


def ce_json(*args) -> tuple[int, dict]:
    proc = subprocess.run([*CE, *args, "--json"], capture_output=True, text=True, timeout=1200)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def job(path: Path, samba, **params) -> str:
    where = {"Location": samba.unc("share", "store"), "port": samba.port,
             "credentials": {"username": USER, "password": PASSWORD}}
    path.write_text(json.dumps({"type": "prepareAndPublish", "params": {
        "provisioningType": "Mcs", "targetPlatform": "azure", "outputStorageLocation": where, "vDiskName": VDISK,
        **params}}))
    return str(path)


@pytest.fixture(scope="module")
def runs(samples, samba, tmp_path_factory):
    work = tmp_path_factory.mktemp("prepare-and-publish")
    store = work / "payloads"
    store.mkdir()
    (store / "stornvme.sys").write_bytes(STORNVME)
    (store / "stornvme.inf").write_text("; stornvme stand-in\r\n")
    write_manifest(store, [{"component": "driver/stornvme", "version": "10.0.17763.1", "file": f}
                           for f in ("stornvme.sys", "stornvme.inf")])
    (samba.share_dir("share") / "store").mkdir()
    sample = samples[SAMPLE]
    before = sha256_file(sample.path)
    child, other = (disks.create_child(str(sample.path), str(work / f"{n}.qcow2"), parent_fmt=sample.format).path
                    for n in ("prepared", "failed"))
    good = job(work / "good.json", samba, ceVmSku=SKU, payloads=str(store), hashDisk=True)
    pristine = sha256_file(child)
    out = {"child": child, "other": other, "vdisk": samba.share_dir("share") / "store" / f"{VDISK}.vhdx"}
    out["plan_rc"], out["plan"] = ce_json("plan", "--job", good, child)
    out["dryRunUnchanged"] = sha256_file(child) == pristine and not out["vdisk"].exists()
    out["run_rc"], out["result"] = ce_json("run", "--job", good, child)
    out["published"] = sha256_file(out["vdisk"])
    out["failed_rc"], out["failed"] = ce_json("run", "--job", job(work / "bad.json", samba), other)
    out["back"] = read_back({"prepared": child, "failed": other}, work)
    yield out
    assert sha256_file(sample.path) == before


def read_back(children: dict[str, str], work: Path) -> dict:
    """One read-only appliance: each child's SYSTEM hive and its stornvme.sys (None when absent)."""
    back = {}
    with Guest([Drive(path, "qcow2", readonly=True) for path in children.values()]) as guest:
        for name, device in zip(children, guest.devices()):
            root = guest.windows_root(device=device)
            guest.mount_windows(root, readonly=True)
            local = work / f"back-{name}"
            local.mkdir()
            driver = guest.win_path(r"C:\Windows\System32\drivers\stornvme.sys")
            back[name] = {"SYSTEM": registry.download_hive(guest, hive_path(guest, root, "SYSTEM"), local),
                          "stornvme": guest.g.read_file(driver) if guest.g.is_file(driver) else None}
            guest.g.umount_all()
    return back


def assert_values(hive: Path, expected: list[tuple]) -> None:
    for key, name, rtype, data in expected:
        assert hivex_value(hive, key, name) == (rtype, data), f"{key}\\{name}"
        assert regipy_value(hive, key, name) == (f"REG_{rtype.name}", data), f"regipy {key}\\{name}"


AZURE = [(rf"{CCS}\Services\vmbus", "Start", RegType.DWORD, 0), (rf"{CCS}\Services\storvsc", "Start", RegType.DWORD, 0),
         (rf"{CCS}\Control\Terminal Server", "fDenyTSConnections", RegType.DWORD, 0),
         (rf"{CCS}\Control\TimeZoneInformation", "RealTimeIsUniversal", RegType.DWORD, 1)]
STORNVME_SERVICE = [(rf"{CCS}\Services\stornvme", "Start", RegType.DWORD, 0),
                    (rf"{CCS}\Services\stornvme", "Type", RegType.DWORD, 1),
                    (rf"{CCS}\Services\stornvme", "ErrorControl", RegType.DWORD, 1),
                    (rf"{CCS}\Services\stornvme", "Group", RegType.SZ, "SCSI miniport"),
                    (rf"{CCS}\Services\stornvme", "ImagePath", RegType.EXPAND_SZ, r"System32\drivers\stornvme.sys")]


def prepare_changes(document: dict) -> list[dict]:
    part = document["parts"][0]
    return part["changes"] if document["dryRun"] else [o["change"] for o in part["outcomes"]]


def test_dry_run_lists_both_halves_and_changes_nothing(runs):
    plan = runs["plan"]
    assert runs["plan_rc"] == 0 and runs["dryRunUnchanged"]
    assert plan["step"] == "prepareAndPublish" and plan["dryRun"] and plan["changes"] == []
    assert [p["step"] for p in plan["parts"]] == ["prepare", "publish"]
    assert plan["parts"][0]["facts"]["vmSku"]["series"] == "Ddsv6"
    nvme = [c for c in prepare_changes(plan) if c["kind"] == "registry_set" and c["key"].endswith(r"\stornvme")]
    assert {(c["name"], json.dumps(c["new"]["value"])) for c in nvme} >= {("Start", "0")}
    assert all(SKU in c["reason"] and "converting-scsi-to-nvme-storage" in c["reason"] for c in nvme)
    write = plan["parts"][1]["changes"]
    assert [(c["kind"], c["format"]) for c in write] == [("disk_write", "vhdx")]
    assert write[0]["target"].endswith(f"\\store\\{VDISK}.vhdx") and not write[0]["replacesExisting"]
    assert PASSWORD not in json.dumps(plan)


def test_run_holds_the_prepare_result_and_the_publish_result(runs):
    result = runs["result"]
    assert runs["run_rc"] == 0 and result["error"] is None and result["seconds"] > 0
    prepared, published = result["parts"]
    assert (prepared["step"], published["step"]) == ("prepare", "publish")
    assert {o["status"] for o in prepared["outcomes"]} == {"applied"}
    assert prepare_changes(result) == prepare_changes(runs["plan"])          # the run did what the dry run said
    assert published["facts"]["target"]["vDiskName"] == VDISK
    assert [o["status"] for o in published["outcomes"]] == ["applied"]
    assert all(0 < p["seconds"] <= result["seconds"] for p in result["parts"])
    assert PASSWORD not in json.dumps(result)


def test_the_vdisk_on_the_share_is_the_prepared_disk(runs):
    compared = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "vhdx", runs["child"], str(runs["vdisk"])],
                              capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    md5 = hashing.hash_disk(runs["vdisk"], algorithms=("md5",)).hashes["md5"]
    assert runs["result"]["parts"][1]["facts"]["hashes"]["md5"] == md5
    assert not list(runs["vdisk"].parent.glob("*.partial"))


def test_the_prepared_image_has_exactly_the_values_prepare_reported(runs):
    hive = runs["back"]["prepared"]["SYSTEM"]
    assert_values(hive, AZURE + STORNVME_SERVICE)
    assert runs["back"]["prepared"]["stornvme"] == STORNVME
    for change in prepare_changes(runs["result"]):
        if change["kind"] == "registry_set" and change["hive"] == "SYSTEM" and change["new"]["type"] == "REG_DWORD":
            assert_values(hive, [(change["key"], change["name"], RegType.DWORD, change["new"]["value"])])


def test_a_failed_publish_keeps_what_prepare_changed(runs):
    failed = runs["failed"]
    assert runs["failed_rc"] == 1 and failed["error"]["code"] == "smb_exists"
    prepared, published = failed["parts"]
    assert prepared["error"] is None and {o["status"] for o in prepared["outcomes"]} == {"applied"}
    assert published["error"]["code"] == "smb_exists" and published["outcomes"] == []
    changed = {(c["key"], c["name"]) for c in prepare_changes(failed) if c["kind"] == "registry_set"}
    assert {(k, n) for k, n, _, _ in AZURE} <= changed
    assert_values(runs["back"]["failed"]["SYSTEM"], AZURE)                # really in the image
    assert hivex_value(runs["back"]["failed"]["SYSTEM"], rf"{CCS}\Services\stornvme", "Start") is None
    assert prepared["facts"]["vmSku"]["name"] == "Standard_D2s_v3"        # the service's default: nothing needed
    assert sha256_file(runs["vdisk"]) == runs["published"]                 # the vDisk there was left alone
