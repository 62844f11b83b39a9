"""What a step the server runs may reach besides its disks, and what its logs give away (issue 16, items 6, 8b, 8c).

* SMB ports: the bootstrap's ``smb_ports`` (default ``[445]``) are the only ports a step may connect to; any other is
  refused at submit naming the field (``port``, or ``Location`` for ``smb://host:port/...``), and again in the step's
  process before any connection. A server it cannot reach reads the same whatever listens there -- nothing, a
  filtered port, a silent listener, ssh, http, a listener answering a broken SMB frame -- so steps are no port scanner.
* Short secrets: a one- or three-letter SMB password is masked where it stands as a value and nowhere else, so it
  neither garbles unrelated lines (step log, service log, step document) nor shows which letters it is made of.
* Payload stores: over the server ``params.payloads`` may name only the bootstrap's ``payloads`` (none without one),
  refused at submit naming the field; the step process opens no other store.

Real components: two ``ce serve`` (one with the bootstrap's defaults, one allowing the module's smbd and the
listeners' ports), the module's smbd, plain TCP listeners on 127.0.0.1. The module is also a step module
(``STEPS``, served through ``CE_EXTRA_STEP_MODULES``): ``test-print-secret`` prints its password the ways a leak
would.
"""
from __future__ import annotations

import io
import json
import logging
import socket
import threading
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from ce import logs
from ce.changes import Plan, Result
from ce.errors import BootstrapInvalid, CeError, PayloadStoreRefused, SmbPortRefused
from ce.payloads import STORE_ENV, PayloadStore, write_manifest
from ce.server import bootstrap
from ce.server.store import STATE_ENV
from ce.smb import Credentials, SmbLocation, SmbShare, StorageLocation
from ce.smb.ports import PORTS_ENV
from ce.step import StepContext, StepParams, StepType
from tests.support.server_harness import ServerProcess, wait_until
from tests.support.smbserver import PASSWORD, USER

MiB = 1 << 20
TERMINAL = ("succeeded", "failed", "canceled")
UNREACHABLE = ("closed", "filtered", "silent", "ssh", "http", "broken-smb")
SHORT_PASSWORDS = ("e", "the")          # a letter and a word that every other log line contains
UNRELATED = "the step checked the share settings before anything else"


# ---------------------------------------------------------------- a test-only step (this module's STEPS)

class PrintParams(StepParams):
    password: SecretStr
    fail: bool = False          # end with an error whose message quotes the password


def print_secret(params: PrintParams, plan: Plan, ctx: StepContext) -> Result:
    """Prints its password as a value the ways leaks look, between lines that have nothing to do with it."""
    password = params.password.get_secret_value()
    ctx.log.info(UNRELATED)
    ctx.log.info("signing in with password %s", password)
    ctx.log.info("settings: %s", {"username": USER, "password": password, "domain": "CETEST"})
    ctx.log.info("url: smb://%s:%s@127.0.0.1/share", USER, password)
    ctx.log.info("password=%s", password)
    ctx.warn("test_warning", f"the SMB server refused user '{USER}' with password '{password}' (domain CETEST)")
    ctx.warn("test_warning", UNRELATED)
    if params.fail:
        raise CeError(f"the share refused password '{password}' for {USER}")
    return Result.of(plan, facts={"printed": True})


def plan_nothing(params, ctx: StepContext) -> Plan:
    return Plan(step="test-print-secret")


STEPS = (StepType(name="test-print-secret", summary="TEST ONLY: print the password param as leaks do",
                  Params=PrintParams, plan=plan_nothing, apply=print_secret),)
STEP_MODULES = "tests.support.server_harness,tests.faults.test_faults_limits"     # this module, by its path


# ---------------------------------------------------------------- listeners that are not SMB servers

class Listener:
    """A TCP port on 127.0.0.1 that is not an SMB server: ``closed`` (nothing listens), ``filtered`` (its accept
    queue is full, so connection attempts time out as against a firewall that drops them), ``silent`` (accepts,
    never answers), ``ssh`` (a banner), ``http`` (a 400 response, then closes), ``broken-smb`` (answers with an SMB
    frame too short to parse). ``accepted`` counts the connections it took."""

    def __init__(self, kind: str):
        self.kind, self.accepted, self._held = kind, 0, []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        if kind == "closed":
            self.sock.close()
            return
        self.sock.listen(0 if kind == "filtered" else 16)
        if kind == "filtered":
            for _ in range(4):                  # fill the accept queue; it is never drained
                client = socket.socket()
                client.setblocking(False)
                try:
                    client.connect(("127.0.0.1", self.port))
                except BlockingIOError:
                    pass
                self._held.append(client)
            return
        threading.Thread(target=self._serve, daemon=True, name=f"listener-{kind}").start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)
            try:
                if self.kind == "ssh":
                    conn.sendall(b"SSH-2.0-x\r\n")
                elif self.kind == "http":
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    conn.close()
                elif self.kind == "broken-smb":
                    conn.recv(65536)
                    conn.sendall(b"\x00\x00\x00\x08\xfeSMBabcd")
            except OSError:
                pass

    def close(self) -> None:
        for s in [self.sock, *self._held]:
            try:
                s.close()
            except OSError:
                pass


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def listeners():
    made = {kind: Listener(kind) for kind in UNREACHABLE}
    yield made
    for listener in made.values():
        listener.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Small raw disks (one per step that may run at the same time), a payload store and another directory that
    holds a store too."""
    base = tmp_path_factory.mktemp("limits")
    disks = []
    for i in range(len(UNREACHABLE) + 2):
        disk = base / f"disk{i}.raw"
        with open(disk, "wb") as f:
            f.truncate(MiB)
        disks.append(disk)
    stores = {}
    for name in ("store", "elsewhere"):
        root = base / name
        root.mkdir()
        (root / "setup.exe").write_bytes(b"not an installer")
        write_manifest(root, [{"component": "vda-server-installer", "version": "1", "file": "setup.exe"}])
        stores[name] = root
    (base / "store-link").symlink_to(stores["store"])
    return {"disks": disks, **stores, "store_link": base / "store-link"}


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory, pki, files):
    """`ce serve` with the bootstrap's defaults: no smb_ports (445 only), no payloads."""
    with ServerProcess(tmp_path_factory.mktemp("plain"), pki, disks=[str(d) for d in files["disks"]],
                       bootstrap={"smb_ports": None}, env={"CE_EXTRA_STEP_MODULES": STEP_MODULES}) as server:
        yield server


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, pki, files, samba, listeners):
    """`ce serve` whose bootstrap allows the smbd's port and every listener's, with a payload store."""
    ports = [samba.port, *(listener.port for listener in listeners.values())]
    with ServerProcess(tmp_path_factory.mktemp("open"), pki, disks=[str(d) for d in files["disks"]],
                       bootstrap={"smb_ports": ports, "payloads": str(files["store"])},
                       env={"CE_EXTRA_STEP_MODULES": STEP_MODULES}) as server:
        yield server


def location(port: int | None, *, url: bool = False, folder: str = "out", password: str = PASSWORD) -> dict:
    where = {"Location": f"smb://127.0.0.1:{port}/share/{folder}"} if url else \
        {"Location": f"\\\\127.0.0.1\\share\\{folder}", **({"port": port} if port else {})}
    return {**where, "credentials": {"username": USER, "password": password, "domain": "CETEST"}}


def export(disk: Path, where: dict) -> dict:
    return {"disk": str(disk), "outputStorageLocation": where, "SmbDiskName": "golden", "dryRun": True}


def post(server: ServerProcess, type_name: str, params: dict, step_id: str | None = None):
    step_id = step_id or f"lim-{uuid.uuid4().hex[:8]}"
    response = server.session().post(f"{server.url}/v1/steps", json={"id": step_id, "type": type_name,
                                                                     "params": params}, timeout=30)
    return step_id, response


def finished(server: ServerProcess, step_id: str, timeout: float = 120) -> dict:
    api = server.session()

    def done():
        doc = api.get(f"{server.url}/v1/steps/{step_id}", timeout=30).json()
        return doc if doc["status"] in TERMINAL else None
    doc = wait_until(done, timeout, f"step {step_id} to end")
    doc["log"] = api.get(f"{server.url}/v1/steps/{step_id}/log", timeout=30).json()["lines"]
    return doc


def service_lines(server: ServerProcess, step_id: str) -> list[str]:
    """The messages of the service's own log about a step."""
    out = []
    for line in server.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step_id") == step_id:
            out.append(record["message"])
    return out


# ---------------------------------------------------------------- item 6: SMB ports

@pytest.mark.parametrize("chosen_by", ["port", "Location"])
def test_a_port_the_bootstrap_does_not_allow_is_refused_at_submit(plain_server, files, samba, chosen_by):
    """The module's smbd listens on a port other than 445: by default no step may use it (none is created)."""
    step_id, response = post(plain_server, "export", export(files["disks"][0], location(
        samba.port, url=chosen_by == "Location")))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_params"
    assert error["field"] == f"params.outputStorageLocation.{chosen_by}"
    assert f"port {samba.port} is not an SMB port this service may connect to (allowed: 445)" in error["message"]
    assert "smb_ports" in error["message"]
    assert plain_server.session().get(f"{plain_server.url}/v1/steps/{step_id}", timeout=30).status_code == 404


def test_the_ports_the_bootstrap_allows_are_used(open_server, files, samba, listeners):
    """Allowed: the smbd's port works (a dry-run export plans against it); still refused: a port not listed."""
    (samba.share_dir("share") / "out").mkdir(exist_ok=True)
    step_id, response = post(open_server, "export", export(files["disks"][0], location(samba.port)))
    assert response.status_code == 202, response.text
    doc = finished(open_server, step_id)
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["result"]["facts"]["target"]["location"] == "\\\\127.0.0.1\\share\\out"

    listed = {samba.port, *(listener.port for listener in listeners.values())}
    other = next(p for p in range(20000, 30000) if p not in listed)
    _, response = post(open_server, "export", export(files["disks"][1], location(other)))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "params.outputStorageLocation.port"
    _, response = post(open_server, "export", export(files["disks"][1], location(None)))      # 445, not listed
    assert response.status_code == 422, response.text
    assert "port 445 (the default) is not an SMB port" in response.json()["error"]["message"]


def test_unreachable_smb_servers_all_read_the_same(open_server, files, listeners):
    """Nothing listening, a filtered port, a silent listener, ssh, http and a broken SMB answer: one code, one
    message apart from the port, one step log apart from the port and disk -- nothing tells them apart."""
    steps = {}
    for disk, (kind, listener) in zip(files["disks"], listeners.items()):
        step_id, response = post(open_server, "export", export(disk, location(listener.port)))
        assert response.status_code == 202, (kind, response.text)
        steps[kind] = (step_id, listener.port, disk)
    docs = {kind: finished(open_server, step_id) for kind, (step_id, _, _) in steps.items()}

    def normal(kind: str, text: str) -> str:
        step_id, port, disk = steps[kind]
        return text.replace(str(disk), "DISK").replace(step_id, "ID").replace(str(port), "PORT")

    errors = {kind: (doc["status"], doc["error"]["code"], normal(kind, doc["error"]["message"]))
              for kind, doc in docs.items()}
    assert set(errors.values()) == {("failed", "smb_unreachable", "could not reach an SMB server at 127.0.0.1 (port "
                                     "PORT); check the host name, the port and the firewall")}, errors
    step_logs = {kind: [(line["level"], normal(kind, line["message"])) for line in doc["log"]]
                 for kind, doc in docs.items()}
    assert len({json.dumps(lines) for lines in step_logs.values()}) == 1, step_logs
    service_logs = {kind: [normal(kind, m) for m in service_lines(open_server, steps[kind][0])] for kind in steps}
    assert len({json.dumps(lines) for lines in service_logs.values()}) == 1, service_logs
    assert listeners["silent"].accepted and listeners["ssh"].accepted and listeners["broken-smb"].accepted


def test_the_step_process_refuses_a_port_before_connecting(listeners, monkeypatch):
    """In a step's process (``$CE_SMB_PORTS`` set, as the server sets it) a port not allowed is refused when the
    params are validated and again by the session itself, before any connection."""
    listener = listeners["silent"]
    before = listener.accepted
    monkeypatch.setenv(PORTS_ENV, "445")
    with pytest.raises(ValidationError, match=f"port {listener.port} is not an SMB port"):
        StorageLocation.model_validate(location(listener.port))
    with pytest.raises(SmbPortRefused, match=f"port {listener.port} is not an SMB port"):
        SmbShare(SmbLocation.parse(f"smb://127.0.0.1:{listener.port}/share"), Credentials(USER, PASSWORD)).connect()
    assert listener.accepted == before
    monkeypatch.setenv(PORTS_ENV, f"445,{listener.port}")
    assert StorageLocation.model_validate(location(listener.port)).port == listener.port
    monkeypatch.delenv(PORTS_ENV)                       # the command line: any port
    assert StorageLocation.model_validate(location(listener.port, url=True)).location.port == listener.port


def test_bootstrap_smb_ports(tmp_path, pki):
    """``smb_ports``: default [445], a list of ports or "any"; handed to steps as $CE_SMB_PORTS."""
    base = {"token": "t" * 40, "tls": {"cert": str(pki.server.cert), "key": str(pki.server.key),
                                      "client_ca": str(pki.ca.cert_path)}}
    path = tmp_path / "bootstrap.json"

    def load(**fields):
        path.write_text(json.dumps({**base, **fields}))
        return bootstrap.load(path)
    assert load().step_env() == {PORTS_ENV: "445", STORE_ENV: "", STATE_ENV: "/var/lib/ce"}
    assert load(smb_ports=[8445, 445], payloads="store").step_env() == {
        PORTS_ENV: "445,8445", STORE_ENV: str(tmp_path / "store"), STATE_ENV: "/var/lib/ce"}
    assert load(smb_ports="any").allowed_smb_ports() is None
    for bad in ([], [0], [70000], "all"):
        with pytest.raises(BootstrapInvalid, match="smb_ports"):
            load(smb_ports=bad)


# ---------------------------------------------------------------- item 8b: short secrets in logs

def test_short_secrets_are_masked_only_as_values():
    """Registered secrets of 1 and 3 letters leave unrelated text alone and are masked where they stand as a value;
    a long secret is still masked anywhere."""
    stream = io.StringIO()
    logger = logging.getLogger("ce.test.redaction")
    logger.handlers[:], logger.propagate = [logs.json_handler(stream)], False
    logger.setLevel(logging.INFO)
    long_secret = "a-long-secret-value"
    secrets = (*SHORT_PASSWORDS, long_secret)
    for secret in secrets:
        logs.add_secret(secret)
    try:
        cases = {
            UNRELATED: UNRELATED,
            "exported the disk to the share in 3 s": "exported the disk to the share in 3 s",
            "signing in with password e": "signing in with password **********",
            "Password: the": "Password: **********",
            "settings: {'username': 'ceuser', 'password': 'the'}": "settings: {'username': 'ceuser', 'password': "
                                                                   "'**********'}",
            'json {"password": "e"}': 'json {"password": "**********"}',
            "url: smb://ceuser:e@host/share": "url: smb://ceuser:**********@host/share",
            "password=the": "password=**********",
            f"token{long_secret}x": "token**********x",
        }
        for message, expected in cases.items():
            logger.info("%s", message)
        written = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
        assert written == list(cases.values())
    finally:
        for secret in secrets:
            logs.remove_secret(secret)


@pytest.mark.parametrize("password", SHORT_PASSWORDS)
def test_a_short_password_garbles_nothing_and_shows_nowhere(plain_server, password):
    """Through the server: the step log, the step document and the service log keep every unrelated line whole and
    mask the password wherever it is printed as a value."""
    step_id, response = post(plain_server, "test-print-secret", {"password": password},
                             step_id=f"short-{len(password)}-the-step")
    assert response.status_code == 202, response.text
    doc = finished(plain_server, step_id)
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["params"]["password"] == "**********"
    refused = f"the SMB server refused user '{USER}' with password '**********' (domain CETEST)"
    assert [w["message"] for w in doc["warnings"]] == [refused, UNRELATED]
    printed = [UNRELATED, "signing in with password **********",
               f"settings: {{'username': '{USER}', 'password': '**********', 'domain': 'CETEST'}}",
               f"url: smb://{USER}:**********@127.0.0.1/share", "password=**********", f"test_warning: {refused}",
               f"test_warning: {UNRELATED}"]
    step_log = [line["message"] for line in doc["log"]]
    assert [m for m in step_log if m in printed] == printed, step_log
    assert not [m for m in step_log if "**********" in m and m not in printed], step_log
    service = service_lines(plain_server, step_id)
    assert [m for m in service if m in printed] == printed, service
    assert not [m for m in service if "**********" in m and m not in printed], service
    assert "step succeeded" in service


def test_a_short_wrong_password_at_a_real_share(open_server, files, samba):
    """An SMB sign-in refused for a one-letter password: the error and the logs read as for any other password."""
    (samba.share_dir("share") / "out").mkdir(exist_ok=True)
    docs = {}
    for password in ("e", "a-long-wrong-password"):
        step_id, response = post(open_server, "export", export(files["disks"][-1], location(
            samba.port, password=password)), step_id=f"wrong-{len(password)}-the-step")
        assert response.status_code == 202, response.text
        docs[password] = finished(open_server, step_id)
        docs[password]["service"] = [m.replace(step_id, "ID") for m in service_lines(open_server, step_id)]
    short, long_ = docs["e"], docs["a-long-wrong-password"]
    assert short["error"] == long_["error"] and short["error"]["code"] == "smb_auth_failed"
    assert [line["message"] for line in short["log"]] == [line["message"] for line in long_["log"]]
    assert short["service"] == long_["service"] and "step failed" in short["service"]
    assert not any("**********" in m for m in short["service"] + [line["message"] for line in short["log"]])


# ---------------------------------------------------------------- item 8c: params.payloads

def test_no_payload_store_in_the_bootstrap_means_none_over_the_server(plain_server, files):
    step_id, response = post(plain_server, "prepare", {"disk": str(files["disks"][0]), "provisioningType": "Mcs",
                                                       "payloads": str(files["elsewhere"]), "dryRun": True})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("payload_store_refused", "params.payloads")
    assert "has no payload store" in error["message"] and "leave params.payloads out" in error["message"]
    assert plain_server.session().get(f"{plain_server.url}/v1/steps/{step_id}", timeout=30).status_code == 404


def test_params_payloads_may_name_only_the_bootstraps_store(open_server, files):
    """Another directory is refused; the bootstrap's own store, here through a symlink, is accepted (the step then
    fails on its md5 check, before it opens the disk)."""
    params = {"disk": str(files["disks"][0]), "provisioningType": "Mcs", "md5Hash": "0" * 32}
    _, response = post(open_server, "prepare", {**params, "payloads": str(files["elsewhere"])})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("payload_store_refused", "params.payloads")
    assert "only this service's payload store" in error["message"]
    step_id, response = post(open_server, "prepare", {**params, "payloads": str(files["store_link"])})
    assert response.status_code == 202, response.text
    assert finished(open_server, step_id)["error"]["code"] == "md5_mismatch"


def test_what_the_bootstraps_store_lacks_is_refused_at_submit(open_server, files):
    """Issue 17 item 4: the step's validate checks the bootstrap's store (which the server's own environment does
    not name) at submit: a PVS build it lacks is a 422 naming params.installPvs, and no step is created."""
    step_id, response = post(open_server, "prepare", {"disk": str(files["disks"][0]), "provisioningType": "Pvs",
                                                      "installPvs": "2402 LTSR CU2", "dryRun": True})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("payload_missing", "params.installPvs")
    assert error["message"].startswith("params.installPvs: payload store ") and "pvs-target-device" in error["message"]
    assert open_server.session().get(f"{open_server.url}/v1/steps/{step_id}", timeout=30).status_code == 404


def test_the_step_process_opens_no_other_store(files, monkeypatch):
    """``$CE_PAYLOADS`` set (the server sets it for each step): that store or, empty, none -- whoever asks."""
    monkeypatch.setenv(STORE_ENV, str(files["store"]))
    assert PayloadStore(files["store_link"]).find("vda-server-installer")
    with pytest.raises(PayloadStoreRefused, match="only this service's payload store"):
        PayloadStore(files["elsewhere"])
    monkeypatch.setenv(STORE_ENV, "")
    with pytest.raises(PayloadStoreRefused, match="has no payload store"):
        PayloadStore(files["store"])
    monkeypatch.delenv(STORE_ENV)                       # the command line: any store
    assert PayloadStore(files["elsewhere"]).find("vda-server-installer")


@pytest.mark.parametrize("password", ("e", "a-password-long-enough"))
def test_an_error_quoting_the_password_reaches_the_document_masked(plain_server, password):
    """A failed step's error message is redacted like its log lines (ce/server/worker.py's Reporter)."""
    step_id, response = post(plain_server, "test-print-secret", {"password": password, "fail": True},
                             step_id=f"fail-{len(password)}")
    assert response.status_code == 202, response.text
    doc = finished(plain_server, step_id)
    assert doc["status"] == "failed"
    assert doc["error"]["message"] == f"the share refused password '**********' for {USER}", doc["error"]
