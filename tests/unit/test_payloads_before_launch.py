"""The payload store is checked before any launch (issue 17, item 4): a prepare, upgradePvs or prepareAndPublish
job whose named store is missing or unreadable, has a bad manifest, lacks what an option needs, or holds a file
whose size or (for the PVS installer, which the image has no say in) sha256 differs from its manifest is refused by
the step's ``validate`` -- which the CLI, job files and the server run before any work -- naming the param. The
command-line tests run the real ``ce plan --job`` on a small raw disk and find no appliance phase on stderr; the
others call ``StepType.parse`` (params in, no disk opened). What the image decides (the VDA flavour and version,
the drivers' architecture, whether anything is needed at all) stays after inspection: with no store named nothing
is refused here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ce.errors import CeError, PayloadMismatch, PayloadMissing, PayloadStoreInvalid
from ce.payloads import STORE_ENV, store_in_force, write_manifest
from ce.step import step_types
from tests.support import ROOT

CE = Path(sys.executable).parent / "ce"
TYPES = step_types()
PREPARE, UPGRADE, BOTH = TYPES["prepare"], TYPES["upgradePvs"], TYPES["prepareAndPublish"]
PVS = {"provisioningType": "Pvs", "installPvs": "2402 LTSR CU2"}          # build 2402.0.2000
MISA = {"provisioningType": "Mcs", "installMisa": True}
NUTANIX = {"provisioningType": "Mcs", "targetPlatform": "nutanix"}
SHARE = {"Location": r"\\127.0.0.1\share\pvs", "credentials": {"username": "u", "password": "p"}}


@pytest.fixture(autouse=True)
def command_line(monkeypatch):
    monkeypatch.delenv(STORE_ENV, raising=False)          # the command line: any store, none configured


@pytest.fixture
def store(tmp_path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    files = {"PVS_Device_x64.exe": b"P" * 4096, "VDAServerSetup.exe": b"V" * 4096, "vioscsi.sys": b"S" * 512,
             "vioscsi.inf": b"I" * 64, "vioscsi-old.sys": b"O" * 512}
    for name, data in files.items():
        (root / name).write_bytes(data)
    write_manifest(root, [
        {"component": "pvs-target-device", "version": "2402.0.2000", "file": "PVS_Device_x64.exe"},
        {"component": "vda-server-installer", "version": "1912.0.9000.11", "file": "VDAServerSetup.exe"},
        {"component": "driver/vioscsi", "version": "100.9", "file": "vioscsi.sys"},
        {"component": "driver/vioscsi", "version": "100.9", "file": "vioscsi.inf"},
        {"component": "driver/vioscsi", "version": "100.1", "file": "vioscsi-old.sys"}])
    return root


def parse(kind, params: dict):
    """``kind.parse``: params in, nothing opened (the disk, when the step has one, does not exist)."""
    return kind.parse({"disk": "/nonexistent/disk.raw", **params} if "disk" in kind.Params.model_fields else params)


def refusal(kind, params: dict) -> CeError:
    with pytest.raises(CeError) as caught:
        parse(kind, params)
    return caught.value


def manifest_entries(store: Path) -> list[dict]:
    return json.loads((store / "manifest.json").read_text())["payloads"]


def rewrite_manifest(store: Path, entries: list[dict]) -> None:
    (store / "manifest.json").write_text(json.dumps({"payloads": entries}))


# ---------------------------------------------------------------- the real command line, no appliance

def plan_job(job: Path, disk: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != STORE_ENV}
    return subprocess.run([str(CE), "plan", "--job", str(job), str(disk)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


@pytest.fixture
def disk(tmp_path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\0" * (1 << 20))
    return path


def test_ce_plan_refuses_a_missing_store_before_starting_the_appliance(tmp_path, disk):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {**PVS, "payloads": "no-such-store"}}))
    proc = plan_job(job, disk)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error [payload_store_invalid]: params.payloads: payload store " in proc.stderr
    assert str(tmp_path / "no-such-store") in proc.stderr          # resolved against the job file's folder
    assert "starting the appliance" not in proc.stderr


def test_ce_plan_refuses_a_swapped_pvs_installer_before_starting_the_appliance(tmp_path, store, disk):
    (store / "PVS_Device_x64.exe").write_bytes(b"Q" * 4096)         # same size: only the sha256 tells
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {**PVS, "payloads": "store"}}))
    proc = plan_job(job, disk, cwd=store)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error [payload_mismatch]: params.payloads: " in proc.stderr
    assert "PVS_Device_x64.exe has sha256" in proc.stderr
    assert "starting the appliance" not in proc.stderr


# ---------------------------------------------------------------- the store itself

def test_a_missing_or_unreadable_store_is_refused(tmp_path, store):
    missing = refusal(PREPARE, {**PVS, "payloads": str(tmp_path / "nowhere")})
    assert isinstance(missing, PayloadStoreInvalid) and missing.field == "payloads"
    assert missing.message.startswith("params.payloads: payload store ") and "not a directory" in missing.message
    (store / "manifest.json").unlink()
    (store / "manifest.json").mkdir()                              # there, but not readable as a file
    unreadable = refusal(PREPARE, {**MISA, "payloads": str(store)})
    assert isinstance(unreadable, PayloadStoreInvalid) and "cannot read" in unreadable.message


@pytest.mark.parametrize("text, words", [
    ("{not json", "not a valid manifest"),
    ('{"payloads": 5}', '"payloads" must be a list'),
    ('{"payloads": [{"component": "x", "version": "1", "file": "../x", "size": 1, "sha256": "' + "0" * 64 + '"}]}',
     "plain file name"),
    ('{"payloads": [{"component": "x", "version": "1", "file": "x", "size": 1, "sha256": "abc"}]}', "64 hex"),
])
def test_a_bad_manifest_is_refused(store, text, words):
    (store / "manifest.json").write_text(text)
    for kind, params in ((PREPARE, NUTANIX), (UPGRADE, {"installPvs": "2402.0.2000"})):
        error = refusal(kind, {**params, **(upgrade_params() if kind is UPGRADE else {}), "payloads": str(store)})
        assert isinstance(error, PayloadStoreInvalid) and error.field == "payloads" and words in error.message


def upgrade_params() -> dict:
    return {"inputStorageLocation": SHARE, "inputImageFilename": "gold.vhdx", "outputImageFilename": "gold.2.avhdx"}


def test_without_an_option_that_needs_it_the_store_is_not_opened(tmp_path):
    assert parse(PREPARE, {"provisioningType": "Mcs", "domainUnjoin": True,
                          "payloads": str(tmp_path / "nowhere")}).payloads


def test_with_no_store_named_the_image_decides(monkeypatch):
    """MISA may already be installed, the platform's drivers inbox: refused after inspection if one is needed."""
    for params in (PVS, MISA, NUTANIX):
        parse(PREPARE, {**params})
    monkeypatch.setenv(STORE_ENV, "")                              # a service without a store
    parse(PREPARE, {**PVS})


# ---------------------------------------------------------------- what the options need

def test_a_missing_pvs_build_names_installpvs(store):
    error = refusal(PREPARE, {"provisioningType": "Pvs", "installPvs": "2203 LTSR CU5", "payloads": str(store)})
    assert isinstance(error, PayloadMissing) and error.field == "installPvs"
    assert error.message.startswith("params.installPvs: payload store ") and "it has version(s) 2402.0.2000" \
        in error.message
    upgrade = refusal(UPGRADE, {**upgrade_params(), "installPvs": "2203 LTSR CU5", "payloads": str(store)})
    assert isinstance(upgrade, PayloadMissing) and upgrade.field == "installPvs"


def test_two_files_for_one_pvs_build_are_refused(store):
    entries = manifest_entries(store)
    rewrite_manifest(store, entries + [{**entries[0], "file": "VDAServerSetup.exe"}])
    error = refusal(PREPARE, {**PVS, "payloads": str(store)})
    assert isinstance(error, PayloadStoreInvalid) and "lists 2 files for pvs-target-device" in error.message


def test_misa_and_mcsio_need_a_vda_installer_of_either_flavour(store):
    write_manifest(store, [{"component": "pvs-target-device", "version": "2402.0.2000", "file": "PVS_Device_x64.exe"}])
    error = refusal(PREPARE, {**MISA, "installMcsio": True, "payloads": str(store)})
    assert isinstance(error, PayloadMissing) and error.field == "installMisa"
    assert "has no vda-server-installer or vda-workstation-installer" in error.message
    only_mcsio = refusal(PREPARE, {"provisioningType": "Mcs", "installMcsio": True, "payloads": str(store)})
    assert only_mcsio.field == "installMcsio"
    write_manifest(store, [{"component": "vda-workstation-installer", "version": "2203.0.6000.9",
                            "file": "VDAServerSetup.exe"}])
    parse(PREPARE, {**MISA, "payloads": str(store)})


def test_a_platform_without_its_drivers_in_the_store_is_not_refused_before_inspection(store):
    """vioscsi may be in the image; whether the store's is needed, and for which architecture, the image says."""
    rewrite_manifest(store, [e for e in manifest_entries(store) if not e["component"].startswith("driver/")])
    parse(PREPARE, {**NUTANIX, "payloads": str(store)})


# ---------------------------------------------------------------- files against their manifest

def test_a_truncated_or_missing_candidate_is_refused_by_its_size(store):
    (store / "VDAServerSetup.exe").write_bytes(b"V" * 4000)
    error = refusal(PREPARE, {**MISA, "payloads": str(store)})
    assert isinstance(error, PayloadMismatch) and error.field == "payloads"
    assert "VDAServerSetup.exe is 4000 bytes, the manifest says 4096" in error.message
    (store / "VDAServerSetup.exe").unlink()
    gone = refusal(PREPARE, {**MISA, "payloads": str(store)})
    assert isinstance(gone, PayloadMissing) and "is in the manifest but" in gone.message


def test_the_newest_driver_of_each_architecture_is_checked_an_older_one_is_not(store):
    (store / "vioscsi-old.sys").write_bytes(b"O")          # never a candidate: 100.9 is newer
    parse(PREPARE, {**NUTANIX, "payloads": str(store)})
    (store / "vioscsi.inf").write_bytes(b"I" * 63)
    error = refusal(PREPARE, {**NUTANIX, "payloads": str(store)})
    assert isinstance(error, PayloadMismatch) and "vioscsi.inf is 63 bytes" in error.message


def test_an_nvme_only_vm_size_makes_stornvme_a_candidate(store):
    (store / "stornvme.sys").write_bytes(b"N" * 256)
    write_manifest(store, [{"component": "driver/stornvme", "version": "10.0.1", "file": "stornvme.sys"}])
    (store / "stornvme.sys").write_bytes(b"N" * 255)
    azure = {"provisioningType": "Mcs", "targetPlatform": "azure", "payloads": str(store)}
    parse(PREPARE, azure)                                          # Standard_D2s_v3: stornvme is not azure's
    error = refusal(PREPARE, {**azure, "ceVmSku": "Standard_D2ds_v6"})          # NVMe only
    assert isinstance(error, PayloadMismatch) and "stornvme.sys is 255 bytes" in error.message


def test_a_swapped_pvs_installer_is_refused_by_its_sha256(store):
    jobs = ((PREPARE, PVS), (UPGRADE, {**upgrade_params(), "installPvs": "2402.0.2000"}))
    for kind, params in jobs:
        parse(kind, {**params, "payloads": str(store)})          # the store intact: accepted
    (store / "PVS_Device_x64.exe").write_bytes(b"Q" * 4096)
    for kind, params in jobs:
        error = refusal(kind, {**params, "payloads": str(store)})
        assert isinstance(error, PayloadMismatch) and error.field == "payloads" and "has sha256" in error.message


def test_prepare_and_publish_refuses_what_its_prepare_half_would(store):
    (store / "PVS_Device_x64.exe").write_bytes(b"Q" * 4096)
    params = {**PVS, "payloads": str(store), "outputStorageLocation": SHARE, "vDiskName": "gold"}
    error = refusal(BOTH, params)
    assert isinstance(error, PayloadMismatch) and error.field == "payloads"


# ---------------------------------------------------------------- the server's store while it validates

def test_the_servers_store_is_the_one_in_force_while_it_validates(tmp_path, store, monkeypatch):
    """At submit the server validates in its own process, whose environment is not the step's: its bootstrap's
    store is put in force for the check (an empty one: none, so nothing is refused before inspection)."""
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "nowhere"))
    with store_in_force(store):
        parse(PREPARE, {**PVS})
    (store / "PVS_Device_x64.exe").write_bytes(b"Q" * 4096)
    with store_in_force(store):
        assert isinstance(refusal(PREPARE, PVS), PayloadMismatch)
    with store_in_force(None):
        parse(PREPARE, {**PVS})
