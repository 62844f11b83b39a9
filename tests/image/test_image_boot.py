"""The built CE image, booted with qemu (TCG) and driven from this host like a connector would (`make image-test`).

One boot gets a CEBOOT config drive (ISO9660, made here with pycdlib, certificates from tests/support/certs.py) and the
win2019-vda2203-pvs sample as its second disk; the API is reached over HTTPS with mutual TLS and the bearer token
through a port forward on 127.0.0.1: health, disks, an inspect step whose result must equal the sample's truth.
Then a forwarded port other than 443 must get no answer at all (the firewall drops it), and after a clean
shutdown the VM's journal (read from its disk with libguestfs, decoded by journalctl) must hold no secret.
A second boot without a config drive must say in the console that ce stays idle.

Slow (nested TCG: the inspect step launches a libguestfs appliance inside the emulated VM) and needs `make image`
first, so these run only when CE_IMAGE_TEST=1 (`make image-test` sets it).
"""
from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import time
import uuid
from pathlib import Path

import guestfs
import pycdlib
import pytest
from pydantic.alias_generators import to_camel
import requests

from images.spec import load_all
from tests.support import ROOT
from tests.support.certs import Authority

IMAGE_DIR = Path(os.environ.get("CE_IMAGE_DIR", ROOT / "build/image"))
IMAGE = IMAGE_DIR / "out/ce.qcow2"
SAMPLE_NAME = "win2019-vda2203-pvs"
SAMPLE = ROOT / "images/build" / f"{SAMPLE_NAME}.qcow2"
READY_TIMEOUT = 20 * 60          # boot under TCG on a loaded 2-CPU host
STEP_TIMEOUT = 60 * 60           # a libguestfs appliance under TCG inside TCG
NO_ANSWER_WAIT = 20              # seconds a dropped connection must stay silent
# A plain model, as Packer's build VM gets: with qemu 7.2's TCG "max" CPU (AVX2 emulation, nested SVM) boots were
# seen where systemd could not see its own mounts.
CPU = "qemu64"

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(os.environ.get("CE_IMAGE_TEST") != "1", reason="boots the built image: run `make image-test`"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Vm:
    """The image under qemu/TCG on a throwaway qcow2 overlay, with a serial log, a QMP socket and port forwards."""

    def __init__(self, workdir: Path, *, config_drive: Path | None = None, extra_disk: Path | None = None,
                 forwards: dict[int, int] | None = None, memory: int = 3072):
        self.workdir = workdir
        self.serial = workdir / "serial.log"
        self.qmp_path = workdir / "qmp.sock"
        self.disk = workdir / "ce-overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(IMAGE), "-F", "qcow2", str(self.disk)],
                       check=True)
        self.forwards = forwards or {}
        hostfwd = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self.forwards.items())
        cmd = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-cpu", CPU, "-smp", "2",
               "-m", str(memory),
               "-nodefaults", "-display", "none", "-no-reboot",
               "-drive", f"file={self.disk},if=virtio,format=qcow2",
               "-netdev", f"user,id=n0{hostfwd}", "-device", "virtio-net-pci,netdev=n0",
               "-serial", f"file:{self.serial}", "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if extra_disk:
            overlay = workdir / "sample-overlay.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(extra_disk), "-F", "qcow2",
                            str(overlay)], check=True)
            cmd += ["-drive", f"file={overlay},if=virtio,format=qcow2"]
        if config_drive:
            cmd += ["-drive", f"file={config_drive},if=ide,media=cdrom,readonly=on"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(workdir / "qemu.err").open("wb"))

    def console(self) -> str:
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def wait_console(self, text: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while text not in self.console():
            assert self.proc.poll() is None, f"qemu exited ({self.proc.returncode}): {self.tail()}"
            assert time.monotonic() < deadline, f"{text!r} not on the console after {timeout} s: {self.tail()}"
            time.sleep(2)
        return time.monotonic() - self.started

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    def powerdown(self, timeout: float = 600) -> None:
        """ACPI power button (systemd-logind shuts down cleanly, so the journal is flushed to disk)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.qmp_path))
            f = s.makefile("rw")
            f.readline()
            for command in ("qmp_capabilities", "system_powerdown"):
                f.write(json.dumps({"execute": command}) + "\n")
                f.flush()
                while "return" not in json.loads(f.readline()):
                    pass
        self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def image() -> Path:
    if not IMAGE.is_file():
        pytest.fail(f"{IMAGE} does not exist: run `make image` first")
    if not SAMPLE.is_file():
        pytest.fail(f"{SAMPLE} does not exist: run `make images` first")
    return IMAGE


def make_config_drive(path: Path, files: dict[str, bytes]) -> Path:
    iso = pycdlib.PyCdlib()
    iso.new(vol_ident="CEBOOT", rock_ridge="1.09", joliet=3)
    for i, (name, content) in enumerate(files.items()):
        iso.add_fp(io.BytesIO(content), len(content), f"/F{i}.;1", rr_name=name, joliet_path="/" + name)
    iso.write(str(path))
    iso.close()
    return path


class Job:
    """What the connector holds for one CE: the token, a client certificate, the CA that signed the server's."""

    def __init__(self, workdir: Path):
        ca = Authority(workdir / "pki", "ce-test-ca")
        self.server = ca.issue("server", "ce.test", server=True)
        self.client = ca.issue("client", "connector.test", server=False)
        self.ca = ca.cert_path
        self.token = secrets.token_urlsafe(36)
        self.bootstrap = {"version": 1, "token": self.token, "listen": "0.0.0.0:443",
                          "tls": {"cert": "server.crt", "key": "server.key", "client_ca": "client-ca.crt"},
                          "state_dir": "/var/lib/ce"}       # no "disks": ce finds the free whole disks itself
        self.drive = make_config_drive(workdir / "ceboot.iso", {
            "bootstrap.json": json.dumps(self.bootstrap).encode(),
            "server.crt": self.server.cert.read_bytes(), "server.key": self.server.key.read_bytes(),
            "client-ca.crt": self.ca.read_bytes()})

    def secrets(self) -> dict[str, str]:
        key_lines = [line for line in self.server.key.read_text().splitlines() if line and "-----" not in line]
        return {"token": self.token, **{f"server.key line {i}": line for i, line in enumerate(key_lines)}}

    def session(self, *, client_cert: bool = True, token: str | None = None) -> requests.Session:
        s = requests.Session()
        s.trust_env = False                 # else $REQUESTS_CA_BUNDLE silently replaces verify
        s.verify = str(self.ca)
        if client_cert:
            s.cert = (str(self.client.cert), str(self.client.key))
        s.headers["Authorization"] = f"Bearer {self.token if token is None else token}"
        return s


class Booted:
    def __init__(self, vm: Vm, job: Job, ready_seconds: float):
        self.vm, self.job, self.ready_seconds = vm, job, ready_seconds
        self.url = f"https://localhost:{vm.forwards[443]}"
        self.api = job.session()

    def get(self, path: str) -> dict:
        response = self.api.get(self.url + path, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def booted(image, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ce-vm")
    job = Job(workdir)
    vm = Vm(workdir, config_drive=job.drive, extra_disk=SAMPLE, forwards={443: free_port(), 8080: free_port()})
    try:
        ready = wait_ready(vm, job)
        record("boot_to_ready_seconds", round(ready, 1))
        yield Booted(vm, job, ready)
    finally:
        vm.kill()


def wait_ready(vm: Vm, job: Job) -> float:
    session = job.session()
    url = f"https://localhost:{vm.forwards[443]}/v1/health"
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        assert vm.proc.poll() is None, f"qemu exited ({vm.proc.returncode}): {vm.tail()}"
        try:
            if session.get(url, timeout=10).status_code == 200:
                return time.monotonic() - vm.started
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"ce did not answer within {READY_TIMEOUT} s; console:\n{vm.tail(40)}"
        time.sleep(3)


def record(name: str, value) -> None:
    """Measured figures for the README and the issue, beside the image."""
    path = IMAGE_DIR / "image-test.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = value
    path.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------- the booted image, driven over HTTPS

def test_bootstrap_came_from_the_config_drive(booted):
    console = booted.vm.console()
    assert "ce-bootstrap: bootstrap found on /dev/sr0 (label CEBOOT)" in console
    assert "no connector callback" in console


def test_health_over_mutual_tls_and_the_token_guards_the_rest(booted):
    assert booted.get("/v1/health")["status"] == "ok"        # liveness: the client certificate is enough
    wrong_token = booted.job.session(token="x" * 40).get(booted.url + "/v1/disks", timeout=60)
    assert wrong_token.status_code == 401
    with pytest.raises(requests.exceptions.SSLError):        # no client certificate: the TLS handshake fails
        booted.job.session(client_cert=False).get(booted.url + "/v1/health", timeout=60)


def test_disks_lists_the_attached_sample_only(booted):
    disks = booted.get("/v1/disks")["disks"]
    sample_size = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(SAMPLE)], check=True,
                                            capture_output=True, text=True).stdout)["virtual-size"]
    assert [(d["path"], d.get("virtualSize")) for d in disks] == [("/dev/vdb", sample_size)]


def test_inspect_step_reports_the_sample_truth(booted):
    step_id = str(uuid.uuid4())
    started = time.monotonic()
    response = booted.api.post(booted.url + "/v1/steps", json={"id": step_id, "type": "inspect",
                                                               "params": {"disk": "/dev/vdb"}}, timeout=60)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + STEP_TIMEOUT
    while (step := booted.get(f"/v1/steps/{step_id}"))["status"] not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline, f"inspect still {step['status']} after {STEP_TIMEOUT} s"
        time.sleep(10)
    record("inspect_step_seconds", round(time.monotonic() - started, 1))
    assert step["status"] == "succeeded", json.dumps(step, indent=2)
    report, truth = step["result"]["facts"], load_all()[SAMPLE_NAME].truth
    assert (report["firmware"], report["partitionTable"]) == (truth["firmware"], truth["partition_table"])
    for section in ("os", "domain", "vda"):
        assert {k: report[section][to_camel(k)] for k in truth[section]} == truth[section], section
    for key, expected in truth["components"].items():         # truth: present (bool) and *_version
        if key.endswith("_version"):
            assert report["components"][key.removesuffix("_version")]["version"] == expected, key
        else:
            assert (report["components"][key] is not None) == expected, key
    assert sorted(t["name"] for t in report["tools"]) == sorted(truth["tools"])
    assert report["warnings"] == []


def test_firewall_drops_a_port_other_than_443(booted):
    """A closed port would answer with a reset, which slirp turns into an immediate close; a dropped SYN leaves the
    forwarded connection silent."""
    with socket.create_connection(("127.0.0.1", booted.vm.forwards[8080]), timeout=10) as s:
        s.settimeout(NO_ANSWER_WAIT)
        try:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            answer = s.recv(100)
        except (socket.timeout, TimeoutError):
            answer = None
        except ConnectionResetError:
            answer = b"<reset>"
    assert answer is None, f"port 8080 answered {answer!r}: it is not dropped"
    assert booted.get("/v1/health")["status"] == "ok"      # and 443 still is served


def test_journal_and_disk_hold_no_secret(booted, tmp_path):
    """Last: shuts the VM down, then reads its journal from the disk and searches the disk's written data."""
    booted.vm.powerdown()
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend(os.environ.get("LIBGUESTFS_BACKEND", "direct"))
    g.set_backend_settings(["force_tcg"])
    g.add_drive_opts(str(booted.vm.disk), format="qcow2", readonly=True)
    g.launch()
    try:
        g.mount_ro("/dev/sda1", "/")
        g.copy_out("/var/log/journal", str(journal_dir))
    finally:
        g.close()
    export = subprocess.run(["journalctl", "--directory", str(journal_dir / "journal"), "--output=export",
                             "--no-pager"], capture_output=True, check=True).stdout.decode(errors="replace")
    assert "ce-bootstrap: bootstrap found on /dev/sr0" in export       # the journal read is the VM's, with ce in it
    assert "_SYSTEMD_UNIT=ce.service" in export
    written = booted.vm.disk.read_bytes()                              # every cluster the VM wrote, uncompressed
    console = booted.vm.console()
    for what, secret in booted.job.secrets().items():
        assert secret not in export, f"the journal holds the {what}"
        assert secret not in console, f"the console holds the {what}"
        assert secret.encode() not in written, f"the VM's disk holds the {what}"


def test_without_a_config_drive_ce_stays_idle(image, tmp_path):
    vm = Vm(tmp_path, forwards={443: free_port()}, memory=1024)
    try:
        seconds = vm.wait_console("ce-bootstrap: no config drive labelled CEBOOT found: ce stays idle", READY_TIMEOUT)
        record("boot_to_idle_seconds", round(seconds, 1))
        with socket.create_connection(("127.0.0.1", vm.forwards[443]), timeout=10) as s:
            s.settimeout(60)
            try:
                answer = s.recv(100)        # nothing listens on 443: the guest resets, slirp closes
            except ConnectionResetError:
                answer = b""
        assert answer == b""
        assert "Started ce.service" not in vm.console()
    finally:
        vm.kill()
