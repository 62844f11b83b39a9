"""The diagnostics step end to end: a writable copy of a sample Windows image holding a real .evtx (written by
Windows; tests/support/evtx_sample.py), text logs, ce's first-boot files and hive backups; a step store with a
canary; a real smbd. Three appliance launches in all (building the image, a dry run, a run), shared by the module.

Checked: the bundle's copies are the image's bytes (sha256 against the bytes written), the summary names the
sample's real error event, no secret (the SMB password, a canary in another step's params) is anywhere in the zip,
the zip opens with zipfile and ``unzip -t``, the share never shows the final name before the file is complete and
a share failing mid-way leaves neither it nor a partial file, and the disk is unchanged."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from ce import firstboot, staging
from ce.errors import CeError
from ce.registry import sha256_file
from ce.server.store import STATE_ENV, STORE_FILE, Store
from ce.step import execute, step_types
from tests.support.appliance import writable_windows
from tests.support.evtx_sample import ERROR_EVENT_ID, PROVIDER, sample_evtx
from tests.support.smbserver import PASSWORD, USER

pytestmark = [pytest.mark.slow, pytest.mark.smb]

KIND = step_types()["diagnostics"]
SAMPLE = "win2016-vda1912"
CANARY = "canary-7Hq2-in-a-step-document"
LOGS = "Windows/System32/winevt/Logs"
MiB = 1 << 20


def location(server, folder: str = "") -> dict:
    return {"Location": server.unc("share", folder), "port": server.port,
            "credentials": {"username": USER, "password": server.password}}


def setupact(size: int) -> bytes:
    """A text log that does not compress much (random hex), newest line last."""
    lines, total, n = [], 0, 0
    while total < size:
        line = f"2024-05-01 10:00:{n % 60:02d}, Info  CSI  {os.urandom(48).hex()}\r\n".encode()
        lines.append(line)
        total, n = total + len(line), n + 1
    return b"".join(lines) + b"LAST LINE: setup finished\r\n"


@pytest.fixture(scope="module")
def image(samples, tmp_path_factory) -> dict:
    """A qcow2 child of the sample with the files diagnostics collects, and the bytes written at each path."""
    work = tmp_path_factory.mktemp("diag-image")
    evtx = sample_evtx().read_bytes()
    action = firstboot.make_action("vda-reconfigure", "vda-reconfigure.ps1", {"portnumber": "80"}, retries=2,
                                   required=False, timeout=600, reason="test")
    files = {
        f"{LOGS}/System.evtx": evtx,
        f"{LOGS}/Microsoft-Windows-Kernel-Boot%4Operational.evtx": evtx,
        f"{LOGS}/Security.evtx": evtx,
        f"{LOGS}/Microsoft-Windows-Shell-Core%4Operational.evtx": evtx,
        "Windows/Panther/setupact.log": setupact(3 * MiB),
        "Windows/Panther/setuperr.log": b"2024-05-01 10:00:00, Error  SP  could not find a driver\r\n",
        "Windows/Setup/ce-firstboot/plan.json": firstboot.staged_plan([action]),
        "Windows/Setup/ce-firstboot/state.json": json.dumps(
            {"boots": 2, "actions": {action.id: {"status": "failed", "attempts": 2}}}).encode(),
        "Windows/Setup/ce-firstboot/firstboot.log": b'{"time": "2024-05-01T10:00:00Z", "action": "vda-reconfigure",'
                                                    b' "status": "failed", "exit": 1603}\n',
        "Windows/System32/config/ce-backup/SOFTWARE.20240501T100000Z": os.urandom(64 << 10),
        "Windows/System32/config/ce-backup/SAM.20240501T100000Z": b"regf" + os.urandom(8 << 10),
    }
    with writable_windows(samples[SAMPLE], work) as (guest, _root):
        for path, data in files.items():
            local = work / "upload"
            local.write_bytes(data)
            guest.make_dirs("/" + path.rsplit("/", 1)[0])
            guest.upload(str(local), "/" + path)
        guest.sync_now()
    return {"disk": work / "child.qcow2", "files": files}


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    """A step store as the server leaves it: an export whose password is the canary (stored in its public form) and
    a log line and an error that quote the diagnostics step's own SMB password."""
    directory = tmp_path_factory.mktemp("state") / "ce"
    store = Store(directory / STORE_FILE)
    export = step_types()["export"].Params.model_validate(
        {"disk": "/dev/sdb", "SmbDiskName": "golden", "outputStorageLocation": {
            "Location": r"\\files\images", "credentials": {"username": "svc", "password": CANARY}}})
    store.insert({"id": "export-1", "type": "export", "params": export.model_dump(mode="json"),
                  "params_hmac": "x", "disks": ["/dev/sdb"], "status": "failed", "timeout": 3600,
                  "created": time.time(), "error": {"code": "smb_auth_failed",
                                                    "message": f"logon failed with password '{PASSWORD}'"}})
    store.append_log("export-1", "2024-05-01T10:00:00", "info", f"signing in with password={PASSWORD}")
    store.close()
    saved = os.environ.get(STATE_ENV)
    os.environ[STATE_ENV] = str(directory)
    yield directory
    if saved is None:
        os.environ.pop(STATE_ENV, None)
    else:
        os.environ[STATE_ENV] = saved


def params(samba, disk, **extra) -> dict:
    return {"disk": str(disk), "outputStorageLocation": location(samba), "maxFileMb": 1, **extra}


@pytest.fixture(scope="module")
def dry_run(image, samba, state_dir):
    before = sha256_file(image["disk"])
    plan = execute(KIND, KIND.parse(params(samba, image["disk"], fileName="dry", dryRun=True)), _ctx())
    return plan.model_dump(mode="json"), before


@pytest.fixture(scope="module")
def bundle(image, samba, state_dir, dry_run, tmp_path_factory):
    """The run: the zip's bytes as the share holds them, the result, and what a watcher saw on the share."""
    share = samba.share_dir("share")
    seen: list[tuple[str, int]] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            for name in os.listdir(share):
                if name.startswith("bundle.zip"):
                    try:
                        seen.append((name, os.path.getsize(share / name)))
                    except OSError:
                        pass
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = execute(KIND, KIND.parse(params(samba, image["disk"], fileName="bundle")), _ctx())
    finally:
        done.set()
        watcher.join()
    data = (share / "bundle.zip").read_bytes()
    return {"result": result.model_dump(mode="json"), "zip": data, "seen": seen, "path": share / "bundle.zip",
            "members": {n: zipfile.ZipFile(io.BytesIO(data)).read(n) for n in zipfile.ZipFile(io.BytesIO(data))
                        .namelist()}}


def _ctx():
    from tests.support.steps import Recorder
    return Recorder()


# ---------------------------------------------------------------- the tests

def test_dry_run_lists_what_would_be_collected_and_writes_nothing(dry_run, samba, image):
    plan, before = dry_run
    assert plan["dryRun"] and plan["changes"][0]["kind"] == "bundle_write"
    assert plan["changes"][0]["target"].endswith("\\dry.zip")
    collected = {row["source"]: row for row in plan["facts"]["collect"]}
    assert r"C:\Windows\System32\winevt\Logs\System.evtx" in collected
    assert r"C:\Windows\System32\winevt\Logs\Microsoft-Windows-Kernel-Boot%4Operational.evtx" in collected
    setup = collected[r"C:\Windows\Panther\setupact.log"]
    assert setup["keep"] == MiB and setup["cut"].startswith("tail:")
    left = {row["source"]: row["cut"] for row in plan["facts"]["leftOut"]}
    assert "audit trail" in left[r"C:\Windows\System32\winevt\Logs\Security.evtx"]
    assert "not one of the channels" in left[
        r"C:\Windows\System32\winevt\Logs\Microsoft-Windows-Shell-Core%4Operational.evtx"]
    assert "password hashes" in left[r"C:\Windows\System32\config\ce-backup\SAM.20240501T100000Z"]
    assert plan["facts"]["ce"]["steps"] == 1
    assert not any(n.startswith("dry") for n in os.listdir(samba.share_dir("share")))
    assert sha256_file(image["disk"]) == before


def test_copies_are_the_images_bytes(bundle, image):
    manifest = json.loads(bundle["members"]["manifest.json"])
    rows = {row["source"]: row for row in manifest["files"]}
    for path, data in image["files"].items():
        name, source = path.rsplit("/", 1)[-1], "C:\\" + path.replace("/", "\\")
        if name in ("Security.evtx", "Microsoft-Windows-Shell-Core%4Operational.evtx") or name.startswith("SAM."):
            assert source not in rows and not any(m.endswith("/" + name) for m in bundle["members"]), name
            continue
        assert source in rows, f"{source} is not in the bundle: {sorted(rows)}"
        member = rows[source]["path"]
        source_sha = hashlib.sha256(data).hexdigest()
        row = rows[source]
        assert row["sourceSha256"] == source_sha and row["sourceSize"] == len(data)
        if name == "setupact.log":                    # cut to its newest MiB by maxFileMb=1
            assert bundle["members"][member] == data[-MiB:] and row["cut"].startswith("tail:")
            assert bundle["members"][member].endswith(b"LAST LINE: setup finished\r\n")
        else:
            assert hashlib.sha256(bundle["members"][member]).hexdigest() == source_sha
            assert row["sha256"] == source_sha and row["size"] == len(data) and "cut" not in row
    assert "image/winevt/Microsoft-Windows-Kernel-Boot%4Operational.evtx" in bundle["members"]
    report = json.loads(bundle["members"]["image/inspect.json"])
    assert report["os"]["rootDevice"] and report["firstBoot"]["staged"][0]["status"] == "failed"


def test_summary_names_the_real_events_first_boot_and_disk_state(bundle):
    text = bundle["members"]["summary.txt"].decode()
    assert f"{PROVIDER} event {ERROR_EVENT_ID}: Test log message, error" in text
    assert "System.evtx: 5 records" in text and "1 error" in text
    assert "vda-reconfigure" in text and "failed" in text and "attempts 2/2" in text
    assert "/dev/sda" in text and "clean" in text
    assert "export-1  export  failed" in text


def test_no_secret_anywhere_in_the_bundle(bundle):
    for secret in (PASSWORD, CANARY):
        assert secret.encode() not in bundle["zip"]
        for name, data in bundle["members"].items():
            assert secret.encode() not in data, f"{secret} in {name}"
            assert secret.encode("utf-16-le") not in data, f"{secret} (UTF-16) in {name}"
    doc = json.loads(bundle["members"]["ce/steps/export-1.json"])
    assert doc["params"]["outputStorageLocation"]["credentials"]["password"] == "**********"
    assert "password=**********" in bundle["members"]["ce/steps/export-1.log"].decode()


def test_zip_opens_and_the_final_name_appears_only_complete(bundle, image, dry_run):
    assert zipfile.ZipFile(bundle["path"]).testzip() is None
    checked = subprocess.run(["unzip", "-t", str(bundle["path"])], capture_output=True, text=True)
    assert checked.returncode == 0 and "No errors detected" in checked.stdout, checked.stdout
    size = len(bundle["zip"])
    assert all(s == size for name, s in bundle["seen"] if name == "bundle.zip"), bundle["seen"]
    assert bundle["result"]["facts"]["bundle"]["compressed"] == size
    assert sha256_file(image["disk"]) == dry_run[1]          # the disk read twice, unchanged


def test_a_share_failing_mid_way_leaves_no_file(full_samba, state_dir, tmp_path):
    """ce's side only (no launch): a step log of ~8 MiB that does not compress, on a share that stops at 4 MiB."""
    store = Store(state_dir / STORE_FILE)
    store.insert({"id": "big-1", "type": "hash", "params": {}, "params_hmac": "x", "disks": [], "status": "succeeded",
                  "timeout": 60, "created": time.time()})
    for i in range(8):
        store.append_log("big-1", "2024-05-01T10:00:00", "info", os.urandom(MiB // 2).hex())
    store.close()
    try:
        with pytest.raises(CeError) as failed:
            execute(KIND, KIND.parse({"outputStorageLocation": location(full_samba), "fileName": "full",
                                      "windowsEventLogs": False, "ipsData": False}), _ctx())
        assert failed.value.code == "smb_share_full"
        assert os.listdir(full_samba.share_dir("share")) == []
    finally:
        _forget(state_dir, "big-1")
    assert not list(Path(staging.scratch_base()).glob(f"ce-diagnostics-{os.getpid()}-*"))


def _forget(directory: Path, step_id: str) -> None:
    import sqlite3
    db = sqlite3.connect(directory / STORE_FILE)
    db.execute("DELETE FROM steps WHERE id = ?", (step_id,))
    db.execute("DELETE FROM step_log WHERE step_id = ?", (step_id,))
    db.commit()
    db.close()
