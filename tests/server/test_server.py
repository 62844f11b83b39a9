"""The step server as the connector sees it: real gunicorn on 127.0.0.1 with generated certificates, real HTTPS
clients. Refusals (no certificate, another CA's certificate, no token), the inspect happy path, idempotent
create, 409s, cancel, timeout, restart -> interrupted, secrets kept out of the state file and logs."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from pydantic.alias_generators import to_camel
import requests

from ce.server import bootstrap
from ce.server.priority import REQUEST_NICE
from ce.server.processes import group_members
from ce.server.worker import PROGRESS_EVERY, Reporter, WorkerContext
from images.spec import load_all as load_specs
from tests.support import ROOT
from tests.support.server_harness import CE, ServerProcess, alive, processes_with, wait_until

SAMPLE = ROOT / "images/build/win2019-vda2203-pvs.qcow2"
SAMPLE_TRUTH = load_specs()["win2019-vda2203-pvs"].truth


@pytest.fixture(scope="module")
def scratch_disks(tmp_path_factory):
    """Two small disk files the test steps lock (never opened by them)."""
    d = tmp_path_factory.mktemp("disks")
    disks = []
    for name in ("a.img", "b.img"):
        (d / name).write_bytes(b"\0" * (1 << 20))
        disks.append(str(d / name))
    return disks


@pytest.fixture(scope="module")
def server_options(scratch_disks) -> dict:
    """The module's server (tests/conftest.py) serves the sample and the two scratch disks."""
    return {"disks": [str(SAMPLE), *scratch_disks]}


def new_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def post_step(server, api, type_name: str, params: dict, step_id: str | None = None) -> requests.Response:
    return api.post(server.url + "/v1/steps", json={"id": step_id or new_id(), "type": type_name, "params": params},
                    timeout=30)


def wait_terminal(server, api, step_id: str, timeout: float = 120) -> dict:
    def terminal():
        doc = api.get(f"{server.url}/v1/steps/{step_id}", timeout=30).json()
        return doc if doc["status"] in ("succeeded", "failed", "canceled") else None
    return wait_until(terminal, timeout, f"step {step_id} to finish")


def wait_status(server, api, step_id: str, status: str, timeout: float = 60) -> dict:
    return wait_until(lambda: (d := api.get(f"{server.url}/v1/steps/{step_id}", timeout=30).json())["status"]
                      == status and d, timeout, f"step {step_id} to be {status}")


# ---------------------------------------------------------------- who may talk to the server

def test_client_without_certificate_is_refused(server):
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        server.session(cert=False).get(server.url + "/v1/health", timeout=10)


def test_client_certificate_from_another_ca_is_refused(server, pki):
    stranger = server.session(cert=(str(pki.stranger.cert), str(pki.stranger.key)))
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        stranger.get(server.url + "/v1/steps", timeout=10)


@pytest.mark.parametrize("token", [None, "wrong-token-" + "x" * 32])
def test_request_without_the_token_is_refused(server, token):
    session = server.session(token=token)
    for method, path in (("GET", "/v1/steps"), ("GET", "/v1/disks"), ("GET", "/openapi.json"),
                         ("POST", "/v1/steps"), ("GET", "/v1/steps/x"), ("POST", "/v1/steps/x/cancel")):
        response = session.request(method, server.url + path, json={"id": "x", "type": "test-wait"}, timeout=10)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_health_needs_no_token_and_tells_no_secret(server):
    response = server.session(token=None).get(server.url + "/v1/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert server.token not in response.text


# ---------------------------------------------------------------- discovery

def test_disks_lists_attached_disks_with_format_and_size(server, api, scratch_disks):
    disks = {d["path"]: d for d in api.get(server.url + "/v1/disks", timeout=30).json()["disks"]}
    assert disks[str(SAMPLE)]["format"] == "qcow2"
    assert disks[str(SAMPLE)]["virtualSize"] == 128 << 20
    assert disks[scratch_disks[0]]["format"] == "raw" and disks[scratch_disks[0]]["virtualSize"] == 1 << 20


def test_step_types_carry_their_param_schemas(server, api):
    types = {t["name"]: t for t in api.get(server.url + "/v1/steps", timeout=10).json()["types"]}
    assert {"inspect", "prepare", "test-wait"} <= set(types)
    assert types["inspect"]["diskParams"] == ["disk"]
    assert "disk" in types["inspect"]["paramsSchema"]["required"]
    spec = api.get(server.url + "/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.1")
    assert "inspect.Params" in spec["components"]["schemas"]
    assert spec["paths"]["/v1/health"]["get"]["security"] == []


# ---------------------------------------------------------------- the happy path

@pytest.mark.slow
def test_inspect_a_sample_image_through_the_api(server, api):
    step_id = new_id()
    response = post_step(server, api, "inspect", {"disk": str(SAMPLE)}, step_id)
    assert response.status_code == 202
    assert response.headers["Location"] == f"/v1/steps/{step_id}"
    doc = wait_terminal(server, api, step_id, timeout=600)
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["progressPercent"] == 100
    report = doc["result"]["facts"]
    assert report["firmware"] == SAMPLE_TRUTH["firmware"]
    for section in ("os", "domain", "vda"):
        for key, expected in SAMPLE_TRUTH[section].items():
            assert report[section][to_camel(key)] == expected, f"{section}.{key}"
    assert report["components"]["pvs"]["version"] == SAMPLE_TRUTH["components"]["pvs_version"]
    assert doc["startedAt"] and doc["finishedAt"]


# ---------------------------------------------------------------- idempotency and conflicts

def test_create_is_idempotent_on_the_step_id(server, api):
    step_id = new_id()
    params = {"seconds": 0.5, "password": "s3cret-pass"}
    first = post_step(server, api, "test-wait", params, step_id)
    again = post_step(server, api, "test-wait", params, step_id)
    assert first.status_code == again.status_code == 202
    assert again.headers["Location"] == first.headers["Location"]
    assert again.json()["createdAt"] == first.json()["createdAt"]
    assert wait_terminal(server, api, step_id)["status"] == "succeeded"
    # A retry after the step finished still returns that step, not a new run.
    late = post_step(server, api, "test-wait", params, step_id).json()
    assert late["status"] == "succeeded" and late["result"]["facts"] == {"slept": 0.5}


def test_a_poller_revalidates_with_the_etag_and_sees_every_change(server, api):
    step_id = new_id()
    assert post_step(server, api, "test-wait", {"seconds": 1.5}, step_id).status_code == 202
    url = f"{server.url}/v1/steps/{step_id}"
    seen = []
    while not seen or seen[-1][1]["status"] != "succeeded":
        response = api.get(url, timeout=30)
        assert response.status_code == 200 and response.headers["Cache-Control"] == "no-cache"
        seen.append((response.headers["ETag"], response.json()))
        time.sleep(0.05)
    # The document is served from memory between changes, yet every poll saw the store as it was: progress and
    # messages move, and the ETag changes exactly when the document does.
    assert len({json.dumps(doc, sort_keys=True) for _, doc in seen}) > 3
    for (tag_a, doc_a), (tag_b, doc_b) in zip(seen, seen[1:]):
        assert (tag_a == tag_b) == (doc_a == doc_b)
    etag, final = seen[-1]
    assert final["result"]["facts"] == {"slept": 1.5} and final["progressPercent"] == 100.0
    unchanged = api.get(url, headers={"If-None-Match": etag}, timeout=30)
    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["ETag"] == etag
    assert api.get(url, headers={"If-None-Match": f'W/{etag}, "other"'}, timeout=30).status_code == 304
    stale = api.get(url, headers={"If-None-Match": seen[0][0]}, timeout=30)
    assert stale.status_code == 200 and stale.json() == final
    for token in (None, "wrong-token-" + "x" * 32):
        refused = server.session(token=token).get(url, headers={"If-None-Match": etag}, timeout=30)
        assert refused.status_code == 401 and "ETag" not in refused.headers and "slept" not in refused.text
    # Every response says how long the server itself took.
    name, _, duration = stale.headers["Server-Timing"].partition(";dur=")
    assert name == "app" and 0 <= float(duration) < 30_000


def test_polls_run_at_a_lower_cpu_priority_than_the_steps_they_poll(server, api, tmp_path):
    pidfile, step_id = tmp_path / "pid", new_id()
    assert post_step(server, api, "test-wait", {"seconds": 60, "pidfile": str(pidfile)}, step_id).status_code == 202
    step = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), 30, "the step process"))
    try:
        (gunicorn_worker,) = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                              if p.read_text().rpartition(") ")[2].split()[1] == str(server.proc.pid)]
        nice = {int(task.name): os.getpriority(os.PRIO_PROCESS, int(task.name))
                for task in Path(f"/proc/{gunicorn_worker}/task").iterdir()}
        assert nice[gunicorn_worker] == REQUEST_NICE          # the main thread, and so every request thread
        assert REQUEST_NICE in {n for tid, n in nice.items() if tid != gunicorn_worker}
        assert 0 in nice.values()                             # the launcher, which started the step's thread
        assert {os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in Path(f"/proc/{step}/task").iterdir()} == {0}
    finally:
        api.post(f"{server.url}/v1/steps/{step_id}/cancel", timeout=30)
    assert wait_terminal(server, api, step_id)["status"] == "canceled"


def test_same_id_with_different_params_is_a_conflict(server, api):
    step_id = new_id()
    assert post_step(server, api, "test-wait", {"seconds": 0.2, "password": "one-password"}, step_id).ok
    for other in ({"seconds": 0.3, "password": "one-password"}, {"seconds": 0.2, "password": "other-password"}):
        response = post_step(server, api, "test-wait", other, step_id)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "conflict"
    response = post_step(server, api, "test-sleep", {"marker": "1"}, step_id)
    assert response.status_code == 409


def test_a_busy_disk_is_a_conflict_naming_the_holder_and_cancel_frees_it(server, api, scratch_disks, tmp_path):
    holder, output = new_id(), tmp_path / "out.bin"
    assert post_step(server, api, "test-wait", {"seconds": 60, "disk": scratch_disks[0],
                                                "output": str(output)}, holder).status_code == 202
    wait_status(server, api, holder, "running")
    wait_until(lambda: output.with_name("out.bin.partial").exists(), 30, "the step's partial file")
    busy = post_step(server, api, "test-wait", {"seconds": 0.1, "disk": scratch_disks[0]})
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "disk_busy"
    assert holder in busy.json()["error"]["message"]
    disks = {d["path"]: d for d in api.get(server.url + "/v1/disks", timeout=30).json()["disks"]}
    assert disks[scratch_disks[0]]["inUseBy"] == holder
    # Another disk is free meanwhile.
    other = new_id()
    assert post_step(server, api, "test-wait", {"seconds": 0.1, "disk": scratch_disks[1]}, other).status_code == 202

    canceled = api.post(f"{server.url}/v1/steps/{holder}/cancel", timeout=10)
    assert canceled.status_code == 202
    doc = wait_terminal(server, api, holder)
    assert doc["status"] == "canceled" and doc["error"]["code"] == "canceled"
    assert not output.with_name("out.bin.partial").exists() and not output.exists()
    assert wait_terminal(server, api, other)["status"] == "succeeded"
    # The disk is free again, and cancel of a finished step is refused.
    after = new_id()
    assert post_step(server, api, "test-wait", {"seconds": 0.1, "disk": scratch_disks[0]}, after).status_code == 202
    assert wait_terminal(server, api, after)["status"] == "succeeded"
    finished = api.post(f"{server.url}/v1/steps/{after}/cancel", timeout=10)
    assert finished.status_code == 409 and finished.json()["error"]["code"] == "step_finished"
    assert api.post(f"{server.url}/v1/steps/{holder}/cancel", timeout=10).json()["status"] == "canceled"


# ---------------------------------------------------------------- stopping steps

def test_timeout_stops_a_step_that_ignores_cancel_and_leaves_no_process(server, api, tmp_path):
    marker, pidfile, step_id = f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}", tmp_path / "pid", new_id()
    assert post_step(server, api, "test-sleep", {"marker": marker, "timeout": 5, "pidfile": str(pidfile)},
                     step_id).status_code == 202
    wait_until(lambda: len(processes_with(f"sleep {marker}")) == 3, 30, "the shell and both sleeps to run")
    worker = int(pidfile.read_text())
    doc = wait_terminal(server, api, step_id, timeout=60)
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == "timeout" and "5 s" in doc["error"]["message"]
    assert processes_with(f"sleep {marker}") == []
    assert not alive(worker)
    assert group_members(worker) == []


def test_cancel_of_a_step_that_ignores_it_kills_its_processes(server, api, tmp_path):
    marker, step_id = f"{5000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}", new_id()
    post_step(server, api, "test-sleep", {"marker": marker}, step_id)
    wait_until(lambda: len(processes_with(f"sleep {marker}")) == 3, 30, "the shell and both sleeps to run")
    assert api.post(f"{server.url}/v1/steps/{step_id}/cancel", timeout=10).status_code == 202
    doc = wait_terminal(server, api, step_id, timeout=60)
    assert doc["status"] == "canceled"
    assert processes_with(f"sleep {marker}") == []
    # What the step's processes printed on stderr is in its log, as everything else.
    lines = api.get(f"{server.url}/v1/steps/{step_id}/log", timeout=10).json()["lines"]
    assert f"sleeping {marker}" in [line["message"] for line in lines]


@pytest.mark.slow
def works_for(pid: int, step_id: str) -> bool:
    """The step process of ``step_id`` (its CE_STEP_ID), not one of another server on this machine."""
    try:
        return f"\0CE_STEP_ID={step_id}\0".encode() in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def test_cancel_stops_the_libguestfs_appliance(server, api):
    step_id = new_id()
    post_step(server, api, "inspect", {"disk": str(SAMPLE)}, step_id)
    workers = wait_until(lambda: [p for p in processes_with("ce.server.worker") if works_for(p, step_id)], 30,
                         "the step process")
    assert len(workers) == 1
    worker = workers[0]
    wait_until(lambda: any("qemu" in Path(f"/proc/{p}/comm").read_text() for p in group_members(worker)
                           if Path(f"/proc/{p}/comm").exists()), 120, "the appliance's qemu in the step's group")
    assert api.post(f"{server.url}/v1/steps/{step_id}/cancel", timeout=10).status_code == 202
    doc = wait_terminal(server, api, step_id, timeout=120)
    assert doc["status"] == "canceled"
    assert group_members(worker) == []
    assert not alive(worker)


def test_a_restarted_service_reports_the_running_step_as_interrupted(tmp_path, pki):
    srv = ServerProcess(tmp_path / "srv", pki).start()
    try:
        api, step_id, pidfile = srv.session(), new_id(), tmp_path / "pid"
        assert post_step(srv, api, "test-wait", {"seconds": 300, "pidfile": str(pidfile)}, step_id).ok
        wait_status(srv, api, step_id, "running")
        worker = int(pidfile.read_text())
        srv.kill()                                      # a crash: no shutdown hook runs
        wait_until(lambda: not alive(worker), 60, "the orphaned step process to stop by itself")
        srv.start()
        doc = srv.session().get(f"{srv.url}/v1/steps/{step_id}", timeout=10).json()
        assert doc["status"] == "failed"
        assert doc["error"]["code"] == "interrupted"
    finally:
        srv.stop()


# ---------------------------------------------------------------- bad input

def test_invalid_input_names_the_field_and_never_500s(server, api):
    url = server.url + "/v1/steps"
    not_json = api.post(url, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=10)
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_request"
    cases = [({"type": "test-wait"}, "id"),
             ({"id": "x", "type": "nope"}, "type"),
             ({"id": "bad id!", "type": "test-wait"}, "id"),
             ({"id": "x", "type": "test-wait", "params": {"seconds": "soon"}}, "params.seconds"),
             ({"id": "x", "type": "test-wait", "params": []}, "params"),
             ({"id": "x", "type": "inspect", "params": {"disk": "/etc/passwd"}}, "params.disk"),
             ({"id": "x", "type": "inspect", "params": {"disk": "/dev/null\0"}}, "params.disk"),
             ({"id": "x", "type": "inspect", "params": {}}, "params.disk")]
    for body, field in cases:
        response = api.post(url, json=body, timeout=10)
        assert response.status_code == 422, body
        assert response.json()["error"]["field"] == field, body
    assert api.get(server.url + "/v1/steps/unknown-step", timeout=10).status_code == 404
    assert api.get(server.url + "/v1/steps/unknown-step/log", timeout=10).status_code == 404
    assert api.post(server.url + "/v1/steps/unknown-step/cancel", timeout=10).status_code == 404
    assert api.delete(server.url + "/v1/steps", timeout=10).status_code == 405
    try:        # the server answers 413 without reading the rest: the client may see the reset instead
        too_big = api.post(url, data=b"x" * (2 << 20), timeout=30)
        assert too_big.status_code == 413
    except requests.exceptions.ConnectionError:
        pass


def test_a_client_goes_on_after_a_refused_oversized_body(server, api):
    """The 413 says ``Connection: close``, so the client's next request opens a new connection instead of reusing
    one the server drops (a connector saw "connection closed without response" on the request after)."""
    for _ in range(5):
        try:
            api.post(server.url + "/v1/steps", data=b"x" * (2 << 20), timeout=30)
        except requests.exceptions.ConnectionError:
            pass
        assert api.post(server.url + "/v1/steps", json={"type": "test-wait"}, timeout=10).status_code == 422


# ---------------------------------------------------------------- secrets, logs, client

def test_secrets_stay_out_of_state_logs_and_responses(server, api):
    password, step_id = "pw-" + uuid.uuid4().hex, new_id()
    post_step(server, api, "test-wait", {"seconds": 0.2, "password": password}, step_id)
    doc = wait_terminal(server, api, step_id)
    assert doc["params"]["password"] == "**********"
    lines = api.get(f"{server.url}/v1/steps/{step_id}/log", timeout=10).json()["lines"]
    assert any("connecting with password **********" == line["message"] for line in lines)
    for path in server.state_dir.iterdir():             # the SQLite file and its WAL
        assert password.encode() not in path.read_bytes(), path
    text = server.log_text()
    assert password not in text and server.token not in text
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    mine = [r for r in records if r.get("step_id") == step_id]
    assert mine and all({"time", "level", "message"} <= set(r) for r in mine)


def test_reference_client_command_line(server, pki):
    base = [str(CE), "client", "--bootstrap", str(server.bootstrap), "--cert", str(pki.client.cert),
            "--key", str(pki.client.key), "--ca", str(pki.ca.cert_path)]
    step_id = new_id()
    run = lambda *args: subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)
    created = run("steps", "create", "--id", step_id, "--type", "test-wait", "--params", '{"seconds": 0.5}')
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["id"] == step_id
    waited = run("steps", "wait", step_id, "--interval", "0.2")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "succeeded"
    assert f"{step_id}: succeeded 100%" in waited.stderr
    log = run("steps", "log", step_id)
    assert "test_warning" in log.stdout
    failed = run("steps", "create", "--type", "test-wait", "--params", '{"seconds": "x"}')
    assert failed.returncode == 1 and "params.seconds" in failed.stderr
    no_cert = subprocess.run([str(CE), "client", "--bootstrap", str(server.bootstrap), "health"],
                             capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert no_cert.returncode == 1 and "client_cert_missing" in no_cert.stderr


# ---------------------------------------------------------------- bootstrap

def write_bootstrap(tmp_path: Path, pki, **changes) -> Path:
    doc = {"version": 1, "token": "t" * 40, "listen": "127.0.0.1:8443",
           "tls": {"cert": "server.crt", "key": "server.key", "client_ca": "job-ca.crt"}, "state_dir": "state"}
    doc.update(changes)
    for name in ("server.crt", "server.key", "job-ca.crt"):
        (tmp_path / name).write_bytes((pki.dir / name).read_bytes())
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(doc))
    return path


def test_bootstrap_paths_are_relative_to_the_file(tmp_path, pki):
    boot = bootstrap.load(write_bootstrap(tmp_path, pki, callback={
        "url": "https://connector.test:8443/ce", "sha1_fingerprint": "AB:" * 19 + "CD"}))
    assert boot.tls.cert == tmp_path.resolve() / "server.crt"
    assert boot.state_dir == tmp_path.resolve() / "state"
    assert boot.callback.sha1_fingerprint == "ab" * 19 + "cd"
    assert boot.port == 8443 and boot.host == "127.0.0.1"


@pytest.mark.parametrize("changes, where", [
    ({"token": "short"}, "token"),
    ({"listen": "8443"}, "listen"),
    ({"version": 2}, "version"),
    ({"tls": {"cert": "server.crt", "key": "missing.key", "client_ca": "job-ca.crt"}}, "tls.key"),
    ({"callback": {"url": "https://c/", "ca": "job-ca.crt", "sha1_fingerprint": "ab" * 20}}, "callback"),
    ({"callback": {"url": "https://c/", "sha1_fingerprint": "xyz"}}, "callback.sha1_fingerprint"),
    ({"callback": {"url": "http://connector.test/ce"}}, "callback.url"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_bootstrap_is_refused_with_the_field(tmp_path, pki, changes, where):
    with pytest.raises(bootstrap.BootstrapInvalid) as exc:
        bootstrap.load(write_bootstrap(tmp_path, pki, **changes))
    assert f": {where}" in exc.value.message
    assert "t" * 40 not in exc.value.message


def test_serve_refuses_a_bad_bootstrap_in_one_line(tmp_path):
    (tmp_path / "bootstrap.json").write_text("{}")
    result = subprocess.run([str(CE), "serve", "--bootstrap", str(tmp_path / "bootstrap.json")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "bootstrap_invalid" in result.stderr and "Traceback" not in result.stderr


def test_a_step_reporting_every_write_sends_a_few_progress_events(tmp_path):
    read_fd, write_fd = os.pipe()
    ctx = WorkerContext("t-progress", Reporter(write_fd))
    started = time.monotonic()
    for i in range(20_000):                                   # a copy reporting each of its writes
        ctx.progress(i / 200, "copying")
    ctx.progress(100, "copying")
    ctx.progress(100, "checking the copy")
    elapsed = time.monotonic() - started
    ctx.reporter._out.close()
    with os.fdopen(read_fd) as events:
        sent = [json.loads(line) for line in events]
    assert sent[0] == {"event": "progress", "percent": 0.0, "message": "copying"}
    assert sent[-2:] == [{"event": "progress", "percent": 100.0, "message": "copying"},
                         {"event": "progress", "percent": 100.0, "message": "checking the copy"}]
    assert len(sent) <= 2 + 1 + elapsed / PROGRESS_EVERY
    assert [e["percent"] for e in sent] == sorted(e["percent"] for e in sent)
