"""The CE image's parts, checked on this host without building it (fast; `make image-test` boots the real image).

- the Packer template passes `packer validate` and refuses bad variables;
- the systemd units pass `systemd-analyze verify`;
- the nftables policy is loaded into a network namespace wired to a second one with a veth pair, and real TCP
  connections show what it lets through and what it drops, including the callback port ce-bootstrap opens;
- ce-bootstrap (the config-drive reader) reads real ISO9660 (Rock Ridge, Joliet) and vfat images;
- scripts/outputs.py converts a small image into every platform's format.
"""
from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pycdlib
import pytest

from ce import disks
from tests.support import ROOT

PACKER = ROOT / "packer"
FILES = PACKER / "files"
READER = FILES / "ce-bootstrap.py"
TOKEN = "tok-" + "9f3a61c2e0b84d7e" * 3
KEY_BODY = "MC4CAQAwBQYDK2VwBCIEIJ0secretkeymaterial0000000000000000"
PEMS = {
    "server.crt": b"-----BEGIN CERTIFICATE-----\nMIIBserver\n-----END CERTIFICATE-----\n",
    "server.key": f"-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n-----END PRIVATE KEY-----\n".encode(),
    "client-ca.crt": b"-----BEGIN CERTIFICATE-----\nMIIBclientca\n-----END CERTIFICATE-----\n",
    "callback-ca.crt": b"-----BEGIN CERTIFICATE-----\nMIIBcallback\n-----END CERTIFICATE-----\n",
}
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")


def bootstrap(**changes) -> dict:
    config = {"version": 1, "token": TOKEN, "listen": "0.0.0.0:443",
              "tls": {"cert": "server.crt", "key": "server.key", "client_ca": "client-ca.crt"},
              "callback": {"url": "https://connector.example:8443/ce/steps", "ca": "callback-ca.crt",
                           "sha1_fingerprint": None, "check_hostname": True},
              "state_dir": "/var/lib/ce", "disks": ["/dev/vdb"]}
    config.update(changes)
    return config


def drive_files(config: dict | None = None, **extra: bytes) -> dict[str, bytes]:
    return {"bootstrap.json": json.dumps(config or bootstrap()).encode(), **PEMS, **extra}


def make_iso(path: Path, files: dict[str, bytes], *, names: str = "rock_ridge", label: str = "CEBOOT") -> Path:
    iso = pycdlib.PyCdlib()
    iso.new(vol_ident=label, **({"rock_ridge": "1.09"} if names == "rock_ridge" else
                                {"joliet": 3} if names == "joliet" else {}))
    for i, (name, content) in enumerate(files.items()):
        extra = ({"rr_name": name} if names == "rock_ridge" else
                 {"joliet_path": "/" + name} if names == "joliet" else {})
        iso.add_fp(io.BytesIO(content), len(content), f"/F{i}.;1", **extra)
    iso.write(str(path))
    iso.close()
    return path


def make_vfat(path: Path, files: dict[str, bytes], *, label: str = "CEBOOT") -> Path:
    subprocess.run(["truncate", "-s", "4M", str(path)], check=True)
    subprocess.run(["mkfs.vfat", "-n", label, str(path)], check=True, capture_output=True)
    staging = path.parent / (path.name + ".files")
    staging.mkdir()
    for name, content in files.items():
        (staging / name).write_bytes(content)
        subprocess.run(["mcopy", "-i", str(path), str(staging / name), "::/" + name], check=True,
                       env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    return path


def run_reader(*args: str, netns: str | None = None) -> subprocess.CompletedProcess:
    owner = pwd.getpwuid(os.getuid()).pw_name
    cmd = [sys.executable, str(READER), "--owner", owner, *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- packer template

def packer_validate(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    base = tmp_path / "base.qcow2"
    base.touch()
    key = tmp_path / "key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    args = ["packer", "validate", "-var", f"base_image={base}", "-var", f"output_dir={tmp_path / 'out'}",
            "-var", f"wheelhouse={tmp_path}", "-var", f"ssh_private_key_file={key}",
            "-var", f"ssh_public_key_file={key}.pub", *extra, str(PACKER / "ce.pkr.hcl")]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "CHECKPOINT_DISABLE": "1"})


def test_packer_template_validates(tmp_path):
    result = packer_validate(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_packer_template_refuses_bad_variables(tmp_path):
    result = packer_validate(tmp_path, "-var", "accelerator=hvf", "-var", 'formats=["qcow2","iso"]')
    assert result.returncode != 0
    assert "The accelerator must be tcg or kvm" in result.stdout + result.stderr
    assert "Formats are qcow2, azure-vhd" in result.stdout + result.stderr


def test_packer_template_is_formatted():
    result = subprocess.run(["packer", "fmt", "-check", "-diff", str(PACKER / "ce.pkr.hcl")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


def test_shell_scripts_parse():
    for script in (PACKER / "scripts").glob("*.sh"):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


# ---------------------------------------------------------------- systemd units

def test_units_pass_systemd_analyze_verify(tmp_path):
    """Verified in a scratch root holding the units and stand-ins for the two programs they start."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/system").symlink_to("/lib/systemd/system")
    for unit in ("ce.service", "ce-bootstrap.service"):
        shutil.copy(FILES / unit, root / "etc/systemd/system" / unit)
    for program in ("opt/ce/bin/ce", "usr/local/sbin/ce-bootstrap"):
        (root / program).parent.mkdir(parents=True, exist_ok=True)
        (root / program).write_text("#!/bin/sh\n")
        (root / program).chmod(0o755)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "ce.service", "ce-bootstrap.service"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_ce_service_waits_for_the_bootstrap():
    unit = (FILES / "ce.service").read_text()
    assert "ConditionPathExists=/run/ce/bootstrap.json" in unit
    assert "Requires=ce-bootstrap.service nftables.service" in unit    # no firewall, no API
    assert "After=ce-bootstrap.service" in unit
    assert "ExecStart=/opt/ce/bin/ce serve --bootstrap /run/ce/bootstrap.json" in unit
    assert "User=ce" in unit


# ---------------------------------------------------------------- nftables, in network namespaces

def test_nftables_policy_parses():
    result = subprocess.run(["nft", "-c", "-f", str(FILES / "nftables.conf")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


LISTENER = """
import socket, sys, threading, time
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(8)
    while True:
        c, _ = s.accept(); c.sendall(b"hello"); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
time.sleep(600)
"""

PROBE = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), timeout=3)
    print("open" if s.recv(5) == b"hello" else "silent")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("dropped")
"""


class NetPair:
    """Two network namespaces joined by a veth pair: "ce" (10.250.x.1, the policy goes here) and "peer" (.2)."""

    def __init__(self):
        tag = f"{os.getpid() % 10000}"
        self.ce, self.peer = f"cetest-ce-{tag}", f"cetest-peer-{tag}"
        self.ce_ip, self.peer_ip = "10.250.77.1", "10.250.77.2"
        self.listeners: list[subprocess.Popen] = []
        for ns in (self.ce, self.peer):
            self.ip("netns", "add", ns)
        self.ip("link", "add", "cet0", "netns", self.ce, "type", "veth", "peer", "name", "cet1", "netns", self.peer)
        for ns, dev, addr in ((self.ce, "cet0", self.ce_ip), (self.peer, "cet1", self.peer_ip)):
            self.ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            self.ip("-n", ns, "link", "set", dev, "up")
            self.ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def listen(self, ns: str, *ports: int) -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, *map(str, ports)],
                                stdout=subprocess.PIPE, text=True)
        self.listeners.append(proc)
        assert proc.stdout.readline().strip() == "ready"

    def probe(self, ns: str, host: str, port: int) -> str:
        result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, host, str(port)],
                                capture_output=True, text=True, timeout=30)
        return result.stdout.strip() or result.stderr.strip()

    def close(self) -> None:
        for proc in self.listeners:
            proc.kill()
            proc.wait()
        for ns in (self.ce, self.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def netpair():
    pair = NetPair()
    yield pair
    pair.close()


@as_root
def test_firewall_allows_only_api_in_and_smb_https_dns_out(netpair, tmp_path):
    net = netpair
    net.listen(net.ce, 443, 8080)
    net.listen(net.peer, 443, 445, 53, 8080, 8443)
    # Without the policy everything connects: the probes below can tell open from dropped.
    assert net.probe(net.peer, net.ce_ip, 8080) == "open"
    assert net.probe(net.ce, net.peer_ip, 8443) == "open"

    subprocess.run(["ip", "netns", "exec", net.ce, "nft", "-f", str(FILES / "nftables.conf")], check=True)

    inbound = {port: net.probe(net.peer, net.ce_ip, port) for port in (443, 8080)}
    outbound = {port: net.probe(net.ce, net.peer_ip, port) for port in (443, 445, 53, 8080, 8443)}
    assert inbound == {443: "open", 8080: "dropped"}
    assert outbound == {443: "open", 445: "open", 53: "open", 8080: "dropped", 8443: "dropped"}
    # the CE still talks to itself
    assert net.probe(net.ce, "127.0.0.1", 8080) == "open"

    # ce-bootstrap opens the connector callback's port (8443 in the bootstrap), and only that one
    drive = make_iso(tmp_path / "ceboot.iso", drive_files(bootstrap(
        callback={"url": f"https://{net.peer_ip}:8443/ce/steps", "ca": "callback-ca.crt"})))
    result = run_reader("--device", str(drive), "--dest", str(tmp_path / "run"), netns=net.ce)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "outbound TCP 8443 opened in the firewall" in result.stdout
    assert net.probe(net.ce, net.peer_ip, 8443) == "open"
    assert net.probe(net.ce, net.peer_ip, 8080) == "dropped"


# ---------------------------------------------------------------- ce-bootstrap, the config-drive reader

@pytest.mark.parametrize("kind", ["rock_ridge", "joliet", "vfat"])
def test_reader_copies_the_bootstrap_from_a_config_drive(tmp_path, kind):
    files = drive_files()
    drive = (make_vfat(tmp_path / "ceboot.img", files) if kind == "vfat"
             else make_iso(tmp_path / "ceboot.iso", files, names=kind))
    dest = tmp_path / "run" / "ce"
    result = run_reader("--device", str(drive), "--dest", str(dest), "--no-firewall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bootstrap found" in result.stdout and "connector callback to connector.example:8443" in result.stdout
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    for name, content in files.items():
        assert (dest / name).read_bytes() == content
        assert (dest / name).stat().st_mode & 0o777 == 0o600
    assert dest.stat().st_mode & 0o777 == 0o700
    assert TOKEN not in result.stdout + result.stderr and KEY_BODY not in result.stdout + result.stderr


def test_reader_without_a_drive_says_ce_stays_idle(tmp_path):
    result = run_reader("--label", "CENODRIVE", "--wait", "0", "--dest", str(tmp_path / "run"))
    assert result.returncode == 0
    assert "no config drive labelled CENODRIVE found: ce stays idle" in result.stdout
    assert not (tmp_path / "run").exists()


BAD_DRIVES = {
    "short token": (drive_files(bootstrap(token="short")), "\"token\" is missing or shorter than 32"),
    "missing key file": ({k: v for k, v in drive_files().items() if k != "server.key"},
                         "names tls.key file 'server.key', which is not on the config drive"),
    "path outside the drive": (drive_files(bootstrap(tls={"cert": "../etc/shadow", "key": "server.key",
                                                          "client_ca": "client-ca.crt"})),
                               "tls.cert '../etc/shadow' must be a plain file name"),
    "key that is not PEM": (drive_files(**{"server.key": b"not a key"}), "'server.key' is not a PEM private key"),
    "not json": ({**drive_files(), "bootstrap.json": b"{version: 1"}, "is not valid UTF-8 JSON"),
    "wrong version": (drive_files(bootstrap(version=2)), "\"version\": 1"),
    "plain http callback": (drive_files(bootstrap(callback={"url": "http://connector.example/ce"})),
                            "callback.url must be an https:// URL"),
    "no bootstrap.json": (PEMS, "the config drive has no bootstrap.json in its root"),
}


@pytest.mark.parametrize("case", BAD_DRIVES)
def test_reader_refuses_a_bad_drive_and_copies_nothing(tmp_path, case):
    files, message = BAD_DRIVES[case]
    drive = make_iso(tmp_path / "ceboot.iso", files)
    dest = tmp_path / "run"
    result = run_reader("--device", str(drive), "--dest", str(dest), "--no-firewall")
    assert result.returncode == 1
    assert message in result.stdout and result.stdout.rstrip().endswith("ce stays idle")
    assert not dest.exists()
    assert TOKEN not in result.stdout and KEY_BODY not in result.stdout


def test_reader_refuses_wrong_label_and_plain_iso9660_names(tmp_path):
    wrong = make_vfat(tmp_path / "other.img", drive_files(), label="DATA")
    result = run_reader("--device", str(wrong), "--dest", str(tmp_path / "a"), "--no-firewall")
    assert result.returncode == 1 and "is labelled 'DATA', not 'CEBOOT'" in result.stdout
    plain = make_iso(tmp_path / "plain.iso", drive_files(), names="iso9660")
    result = run_reader("--device", str(plain), "--dest", str(tmp_path / "b"), "--no-firewall")
    assert result.returncode == 1 and "neither Rock Ridge nor Joliet names" in result.stdout


# ---------------------------------------------------------------- per-platform outputs

def test_outputs_for_every_platform(tmp_path):
    raw = tmp_path / "src.raw"
    with open(raw, "wb") as f:                    # 40 MiB + 3 sectors: not a whole MiB, like Azure must not get
        f.truncate(40 * 2**20 + 1536)
        for offset in (0, 7 * 2**20, 40 * 2**20):
            f.seek(offset)
            f.write(os.urandom(1536))
    image = tmp_path / "ce.qcow2"
    disks.convert(raw, image, "qcow2")
    result = subprocess.run([sys.executable, str(PACKER / "scripts/outputs.py"), str(image), "qcow2", "azure-vhd",
                             "vsphere-vmdk", "gce-tar", "xenserver-vhd"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((tmp_path / "outputs.json").read_text())
    assert [o["file"] for o in manifest["outputs"]] == ["ce.qcow2", "ce-azure.vhd", "ce-vsphere.vmdk",
                                                         "ce-gce.tar.gz", "ce-xenserver.vhd"]

    disks.verify_azure_vhd(tmp_path / "ce-azure.vhd")
    assert disks.info(tmp_path / "ce-azure.vhd", "vhd").virtual_size == 41 * 2**20
    assert disks.info(tmp_path / "ce-vsphere.vmdk").subformat == "streamOptimized"
    assert disks.info(tmp_path / "ce-xenserver.vhd").subformat == "dynamic"
    for name in ("ce-azure.vhd", "ce-vsphere.vmdk", "ce-xenserver.vhd"):
        assert disks.compare(raw, tmp_path / name, "raw"), name

    with tarfile.open(tmp_path / "ce-gce.tar.gz", "r:gz") as tar:
        (member,) = tar.getmembers()
        assert member.name == "disk.raw" and member.issparse()
        tar.extract(member, tmp_path / "gce")
    assert (tmp_path / "gce/disk.raw").read_bytes() == raw.read_bytes()
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".gce-*"))


# ---------------------------------------------------------------- the base disk boots (CI's stand-in for the image)

@as_root
@pytest.mark.slow
def test_base_disk_boots_and_admits_only_the_build_key(tmp_path):
    """scripts/base-disk.sh (cached after the first run) boots under qemu/TCG; SSH takes the key handed in through
    fw_cfg and nothing else. The full image is booted by `make image-test`."""
    base = tmp_path / "base.qcow2"
    subprocess.run([str(PACKER / "scripts/base-disk.sh"), str(base)], check=True, timeout=1800)
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base.resolve()), "-F", "qcow2",
                    str(overlay)], check=True)
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serial = tmp_path / "serial.log"
    serial.touch()
    vm = subprocess.Popen(["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-cpu", "qemu64", "-smp", "2", "-m", "1024",
                           "-nodefaults", "-display", "none", "-drive", f"file={overlay},if=virtio,format=qcow2",
                           "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
                           "-device", "virtio-net-pci,netdev=n0", "-serial", f"file:{serial}",
                           "-fw_cfg", f"name=opt/ce/build_key,file={key}.pub"])
    ssh = ["ssh", "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
    try:
        deadline = time.monotonic() + 900
        while "ce-build-key: build key installed" not in serial.read_text(errors="replace"):
            assert vm.poll() is None and time.monotonic() < deadline, serial.read_text(errors="replace")[-2000:]
            time.sleep(2)
        while True:
            result = subprocess.run([*ssh, "-i", str(key), "root@127.0.0.1",
                                     "systemctl is-system-running --wait; passwd -S root; uname -r"],
                                    capture_output=True, text=True, timeout=600)
            if result.returncode != 255 or time.monotonic() > deadline:
                break
            time.sleep(3)
        lines = result.stdout.split()
        assert lines[0] == "running", result.stdout + result.stderr
        assert "root L" in result.stdout                        # root's password is locked
        other_key = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
        refused = subprocess.run([*ssh, "-i", str(other_key), "root@127.0.0.1", "true"], capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 255 and "Permission denied" in refused.stderr
    finally:
        vm.kill()
        vm.wait()
