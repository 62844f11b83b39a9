"""The diagnostics step's parts that need no appliance or smbd: params and the job file, the caps, the ZIP64
writer and its manifest, the .evtx summary on a real Windows log, ce's own side read from a real step store."""
from __future__ import annotations

import json
import re
import subprocess
import time
import zipfile

import pytest

from ce import logs
from ce.cli.jobs import load_job
from ce.diagnostics import evtx
from ce.diagnostics.bundle import RESERVED, Bundle, check, decide
from ce.diagnostics.service import documents, step_lines, store_rows
from ce.errors import CeError, InvalidJob, InvalidParams
from ce.server.store import STATE_ENV, STORE_FILE, Store
from ce.step import step_types
from tests.support import ROOT
from tests.support.evtx_sample import ERROR_EVENT_ID, PROVIDER, sample_evtx

KIND = step_types()["diagnostics"]
MiB = 1 << 20
LOCATION = {"Location": r"\\files\support", "credentials": {"username": "u", "password": "pw-secret-123456"}}


def test_params_defaults_and_refusals():
    params = KIND.parse({"disk": "/dev/sdb", "outputStorageLocation": LOCATION})
    assert params.ceLogs and params.windowsEventLogs and params.ipsData
    assert re.fullmatch(r"ce-diagnostics-\d{8}T\d{6}Z\.zip", params.fileName)
    with pytest.raises(InvalidParams) as refused:
        KIND.parse({"disk": "/dev/sdb", "outputStorageLocation": LOCATION, "ceLogs": False,
                    "windowsEventLogs": False, "ipsData": False})
    assert "nothing to collect" in refused.value.message
    with pytest.raises(InvalidParams) as refused:
        KIND.parse({"outputStorageLocation": LOCATION})
    assert refused.value.field == "disk"
    KIND.parse({"outputStorageLocation": LOCATION, "windowsEventLogs": False, "ipsData": False})   # ce's side only
    with pytest.raises(CeError) as refused:
        KIND.parse({"disk": "/dev/sdb", "outputStorageLocation": LOCATION, "fileName": r"..\up.zip"})
    assert refused.value.field == "fileName" and refused.value.code == "smb_path_refused"
    with pytest.raises(InvalidParams) as refused:
        KIND.parse({"disk": "/dev/sdb", "outputStorageLocation": LOCATION, "fileName": r"sub\up.zip"})
    assert refused.value.field == "fileName"


def test_the_example_job_file_runs_with_ce_run(tmp_path):
    kind, params = load_job(str(ROOT / "examples" / "diagnostics.json"), step_types(), disk=str(tmp_path / "d.raw"),
                            dryRun=True)
    assert kind.name == "diagnostics" and params.disk == str(tmp_path / "d.raw") and params.dryRun
    with pytest.raises(InvalidJob):
        load_job(str(ROOT / "examples" / "diagnostics.json"), step_types(), disk="/dev/sdb", maxFileMb=0)


def test_caps_keep_a_text_logs_tail_and_leave_out_other_files():
    assert decide("x.evtx", 10 * MiB, 0, 64 * MiB, 1024 * MiB) == (10 * MiB, "")
    keep, cut = decide("setupact.log", 10 * MiB, 0, 2 * MiB, 1024 * MiB)
    assert keep == 2 * MiB and cut.startswith("tail:") and "per-file" in cut
    keep, cut = decide("System.evtx", 10 * MiB, 0, 2 * MiB, 1024 * MiB)
    assert keep == 0 and "per-file cap" in cut
    keep, cut = decide("System.evtx", 10 * MiB, 0, 64 * MiB, RESERVED + 5 * MiB)
    assert keep == 0 and "bundle cap" in cut
    keep, cut = decide("CBS.log", 10 * MiB, 0, 64 * MiB, RESERVED + 5 * MiB)
    assert keep == 5 * MiB and "bundle cap" in cut


def test_bundle_is_zip64_with_a_manifest_and_reads_back(tmp_path):
    local = tmp_path / "copy"
    local.write_bytes(b"line\n" * 1000)
    with Bundle(tmp_path / "b.zip", max_file=MiB, max_bundle=64 * MiB) as out:
        out.add_bytes("summary.txt", b"hello\n", source="generated", group="summary")
        out.add_file("image/logs/x.log", local, source=r"C:\Windows\x.log", group="windowsEventLogs",
                     source_size=5000, source_sha256="ab")
        out.left_out(r"C:\Windows\MEMORY.DMP", "windowsEventLogs", 1 << 33, "a full memory dump")
        manifest = out.finish({"disk": "d"})
    assert check(tmp_path / "b.zip") == 3
    with zipfile.ZipFile(tmp_path / "b.zip") as z:
        assert z.namelist()[-1] == "manifest.json" and json.loads(z.read("manifest.json")) == manifest
        assert z.read("image/logs/x.log") == local.read_bytes()
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
        assert z.getinfo("image/logs/x.log").compress_size < 1000
    assert manifest["leftOut"][0]["cut"] == "left out: a full memory dump"
    assert subprocess.run(["unzip", "-tq", str(tmp_path / "b.zip")], capture_output=True).returncode == 0


def test_a_real_evtx_is_summarized_by_its_events():
    summary = evtx.read_log(str(sample_evtx()), "System.evtx")
    assert summary.records == 5 and not summary.error and summary.levels[2] == 1
    assert [(e.provider, e.event_id, e.level) for e in summary.problems] == [(PROVIDER, ERROR_EVENT_ID, 2)]
    lines = "\n".join(evtx.summary_lines([summary]))
    assert f"{PROVIDER} event {ERROR_EVENT_ID}: Test log message, error" in lines
    assert "no boot marker" in lines


def test_a_file_that_is_not_an_evtx_is_named_not_fatal(tmp_path):
    bad = tmp_path / "Broken.evtx"
    bad.write_bytes(b"ElfFile\0" + b"\xff" * 5000)
    summary = evtx.read_log(str(bad), "Broken.evtx")
    assert summary.records == 0
    assert "Broken.evtx: 0 records" in "\n".join(evtx.summary_lines([summary]))


def test_ce_side_reads_the_store_read_only_and_redacts(tmp_path, monkeypatch):
    store = Store(tmp_path / "state" / STORE_FILE)
    store.insert({"id": "s1", "type": "hash", "params": {"disk": "/dev/sdb"}, "params_hmac": "x", "disks": [],
                  "status": "failed", "timeout": 60, "created": time.time(),
                  "error": {"code": "smb_auth_failed", "message": "password 'pw-secret-123456' refused"}})
    store.append_log("s1", "2024-01-01T00:00:00", "info", "token=pw-secret-123456")
    store.close()
    before = (tmp_path / "state" / STORE_FILE).read_bytes()
    rows, why = store_rows(tmp_path / "state")
    assert not why and [r["id"] for r in rows] == ["s1"]
    logs.add_secret("pw-secret-123456")
    try:
        docs = dict(documents(rows))
        text = "\n".join(step_lines(rows))
    finally:
        logs.remove_secret("pw-secret-123456")
    assert all(b"pw-secret-123456" not in data for data in docs.values()) and "pw-secret-123456" not in text
    assert json.loads(docs["ce/steps/s1.json"])["status"] == "failed"
    assert (tmp_path / "state" / STORE_FILE).read_bytes() == before
    assert store_rows(None)[1].startswith("no step store")


def test_the_server_tells_steps_its_state_dir(tmp_path):
    from ce.server.bootstrap import Bootstrap
    boot = Bootstrap.model_validate({"token": "t" * 40, "tls": {"cert": "c", "key": "k", "client_ca": "a"},
                                     "state_dir": str(tmp_path)})
    assert boot.step_env()[STATE_ENV] == str(tmp_path)
