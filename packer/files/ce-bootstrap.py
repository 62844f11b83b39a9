#!/usr/bin/python3
"""ce-bootstrap: hand the per-job bootstrap from the config drive to ce.service (installed as /usr/local/sbin/ce-bootstrap).

The config drive is a vfat or ISO9660 volume labelled CEBOOT whose root holds ``bootstrap.json`` and the PEM files
it names (format: packer/README.md). This program finds the drive, reads it in user space (mtools for vfat,
pycdlib for ISO9660: nothing is mounted, so a hostile volume never meets a kernel filesystem driver), checks the
bootstrap enough to give a clear message, and copies it to /run/ce (tmpfs, 0700, owned by the ce user), with
``bootstrap.json`` written last: its presence is what starts ce.service. When the connector's callback URL uses a
port other than 443, that port is added to the firewall's outbound set.

Without a drive it says so and exits 0: ce.service stays idle. A bad drive exits 1 with one line saying what is
wrong. Nothing secret is printed: the messages name files and hosts, never the token or key material.
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from urllib.parse import urlsplit

LABEL = "CEBOOT"
BOOTSTRAP = "bootstrap.json"
MAX_FILE_BYTES = 1 << 20
MIN_TOKEN_CHARS = 32
NFT_OUT_SET = ("inet", "ce", "out_tcp")
ALWAYS_OPEN_PORTS = {443, 445}
PEM_MARKERS = {"cert": b"-----BEGIN CERTIFICATE-----", "client_ca": b"-----BEGIN CERTIFICATE-----",
               "ca": b"-----BEGIN CERTIFICATE-----", "key": b"PRIVATE KEY-----"}


class BootstrapError(Exception):
    """One line for the journal: what is wrong with the drive and what to do."""


# ---------------------------------------------------------------- finding and reading the drive

def find_device(label: str, wait_seconds: float) -> str | None:
    """The block device carrying the label, waiting for udev to report late devices."""
    if shutil.which("udevadm"):
        subprocess.run(["udevadm", "settle", "--timeout=30"], check=False)
    deadline = time.monotonic() + wait_seconds
    while True:
        found = subprocess.run(["blkid", "-l", "-t", f"LABEL={label}", "-o", "device"],
                               capture_output=True, text=True, check=False).stdout.strip()
        if found or time.monotonic() >= deadline:
            return found or None
        time.sleep(1)


def probe(device: str) -> dict[str, str]:
    """blkid's low-level probe of a device or image file: TYPE, LABEL, ..."""
    result = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True, check=False)
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


class VfatVolume:
    def __init__(self, device: str):
        self.device = device
        self.env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}

    def names(self) -> set[str]:
        result = self._mtools("mdir", "-b", "::/")
        return {line.rsplit("/", 1)[-1] for line in result.stdout.decode(errors="replace").splitlines() if line}

    def read(self, name: str) -> bytes:
        return self._mtools("mcopy", "-n", f"::/{name}", "-").stdout

    def close(self) -> None:
        pass

    def _mtools(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([tool, "-i", self.device, *args], capture_output=True, env=self.env, check=False)
        if result.returncode:
            reason = result.stderr.decode(errors="replace").strip().splitlines()[:1]
            raise BootstrapError(f"cannot read the vfat volume {self.device}: {' '.join(reason) or tool + ' failed'}")
        return result


class IsoVolume:
    """ISO9660 through its Rock Ridge or Joliet names (plain ISO9660 names are upper-case 8.3 and cannot say
    bootstrap.json)."""

    def __init__(self, device: str):
        import pycdlib
        self.device = device
        self.iso = pycdlib.PyCdlib()
        try:
            self.iso.open(device)
        except Exception as exc:  # pycdlib raises its own exception types, and OSError
            raise BootstrapError(f"cannot read the ISO9660 volume {device}: {exc}") from None
        if self.iso.has_rock_ridge():
            self.kind = "rr_path"
        elif self.iso.has_joliet():
            self.kind = "joliet_path"
        else:
            self.iso.close()
            raise BootstrapError(f"the ISO9660 volume {device} has neither Rock Ridge nor Joliet names: "
                                 "make it with Rock Ridge (genisoimage -r / xorriso -R) or Joliet (-J)")

    def names(self) -> set[str]:
        return {child.file_identifier().decode("utf-16-be", "replace") if self.kind == "joliet_path"
                else child.rock_ridge.name().decode("utf-8", "replace")
                for child in self.iso.list_children(**{self.kind: "/"})
                if not (child.is_dot() or child.is_dotdot())}

    def read(self, name: str) -> bytes:
        import io
        out = io.BytesIO()
        self.iso.get_file_from_iso_fp(out, **{self.kind: "/" + name})
        return out.getvalue()

    def close(self) -> None:
        self.iso.close()


def open_volume(device: str, label: str):
    info = probe(device)
    if info.get("LABEL") != label:
        raise BootstrapError(f"{device} is labelled {info.get('LABEL', 'nothing')!r}, not {label!r}")
    kind = info.get("TYPE")
    if kind == "vfat":
        return VfatVolume(device)
    if kind == "iso9660":
        return IsoVolume(device)
    raise BootstrapError(f"{device} holds a {kind or 'unknown'} filesystem: the config drive must be vfat or ISO9660")


# ---------------------------------------------------------------- checking the bootstrap

def read_bootstrap(volume) -> dict[str, bytes]:
    """bootstrap.json and every file it names, checked; name -> content."""
    names = volume.names()
    if BOOTSTRAP not in names:
        raise BootstrapError(f"the config drive has no {BOOTSTRAP} in its root (it holds: "
                             f"{', '.join(sorted(names)) or 'nothing'})")
    raw = _bounded(BOOTSTRAP, volume.read(BOOTSTRAP))
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BootstrapError(f"{BOOTSTRAP} is not valid UTF-8 JSON: {exc}") from None
    files = {BOOTSTRAP: raw}
    for role, name in referenced_files(config):
        if name not in names:
            raise BootstrapError(f"{BOOTSTRAP} names {role} file {name!r}, which is not on the config drive")
        content = _bounded(name, volume.read(name))
        if PEM_MARKERS[role.split(".")[-1]] not in content:
            raise BootstrapError(f"{role} file {name!r} is not a PEM {'private key' if role.endswith('key') else 'certificate'}")
        files[name] = content
    return files


def referenced_files(config) -> list[tuple[str, str]]:
    """Validate the fields ce-bootstrap relies on; the server validates the rest when it starts."""
    if not isinstance(config, dict) or config.get("version") != 1:
        raise BootstrapError(f"{BOOTSTRAP} must be a JSON object with \"version\": 1")
    token = config.get("token")
    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
        raise BootstrapError(f"{BOOTSTRAP}: \"token\" is missing or shorter than {MIN_TOKEN_CHARS} characters")
    tls = config.get("tls")
    if not isinstance(tls, dict):
        raise BootstrapError(f"{BOOTSTRAP}: \"tls\" with cert, key and client_ca is required")
    refs = [(f"tls.{field}", tls.get(field)) for field in ("cert", "key", "client_ca")]
    callback = config.get("callback")
    if callback is not None:
        if not isinstance(callback, dict) or not isinstance(callback.get("url"), str):
            raise BootstrapError(f"{BOOTSTRAP}: \"callback\" needs a \"url\"")
        if callback.get("ca") is not None:
            refs.append(("callback.ca", callback["ca"]))
    for role, name in refs:
        if not isinstance(name, str) or not name:
            raise BootstrapError(f"{BOOTSTRAP}: {role} must name a file on the config drive")
        if "/" in name or name in (".", "..") or name == BOOTSTRAP:
            raise BootstrapError(f"{BOOTSTRAP}: {role} {name!r} must be a plain file name in the drive's root")
    return refs


def _bounded(name: str, content: bytes) -> bytes:
    if len(content) > MAX_FILE_BYTES:
        raise BootstrapError(f"{name} on the config drive is larger than {MAX_FILE_BYTES} bytes")
    return content


# ---------------------------------------------------------------- handing it over

def install(files: dict[str, bytes], dest: str, owner: str) -> None:
    """Write every file as NAME.partial, then rename; bootstrap.json goes last."""
    user = pwd.getpwnam(owner)
    os.makedirs(dest, mode=0o700, exist_ok=True)
    os.chmod(dest, 0o700)
    os.chown(dest, user.pw_uid, user.pw_gid)
    for name in sorted(files, key=lambda n: n == BOOTSTRAP):
        partial = os.path.join(dest, name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(files[name])
            f.flush()
            os.fsync(f.fileno())
        os.chown(partial, user.pw_uid, user.pw_gid)
        os.replace(partial, os.path.join(dest, name))


def callback_endpoint(config: dict) -> tuple[str, int] | None:
    url = (config.get("callback") or {}).get("url")
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise BootstrapError(f"{BOOTSTRAP}: callback.url must be an https:// URL with a host")
    try:
        return parts.hostname, parts.port or 443
    except ValueError:
        raise BootstrapError(f"{BOOTSTRAP}: callback.url has an invalid port") from None


def open_outbound_port(port: int) -> str:
    if port in ALWAYS_OPEN_PORTS:
        return f"outbound TCP {port} is open"
    family, table, name = NFT_OUT_SET
    result = subprocess.run(["nft", "add", "element", family, table, name, f"{{ {port} }}"],
                            capture_output=True, text=True, check=False)
    if result.returncode:
        reason = result.stderr.strip().splitlines()[:1]
        return f"warning: could not open outbound TCP {port} in the firewall ({' '.join(reason)}); callbacks will fail"
    return f"outbound TCP {port} opened in the firewall"


# ---------------------------------------------------------------- main

def run(args) -> str:
    device = args.device or find_device(args.label, args.wait)
    if device is None:
        return (f"no config drive labelled {args.label} found: ce stays idle "
                "(attach one and reboot; format in packer/README.md)")
    volume = open_volume(device, args.label)
    try:
        files = read_bootstrap(volume)
    finally:
        volume.close()
    config = json.loads(files[BOOTSTRAP])
    endpoint = callback_endpoint(config)
    firewall = ""
    if endpoint and args.firewall:
        firewall = "; " + open_outbound_port(endpoint[1])
    install(files, args.dest, args.owner)
    callback = f"; connector callback to {endpoint[0]}:{endpoint[1]}" if endpoint else "; no connector callback"
    return (f"bootstrap found on {device} (label {args.label}): {len(files)} files copied to {args.dest}"
            f"{callback}{firewall}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ce-bootstrap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", help="read this device or image file instead of searching by label")
    parser.add_argument("--label", default=LABEL, help="volume label of the config drive (default %(default)s)")
    parser.add_argument("--dest", default="/run/ce", help="where ce.service reads the bootstrap (default %(default)s)")
    parser.add_argument("--owner", default="ce", help="user that owns the copied files (default %(default)s)")
    parser.add_argument("--wait", type=float, default=10, help="seconds to wait for the drive (default %(default)s)")
    parser.add_argument("--no-firewall", dest="firewall", action="store_false",
                        help="do not open the callback port in nftables")
    args = parser.parse_args(argv)
    try:
        print(f"ce-bootstrap: {run(args)}", flush=True)
        return 0
    except BootstrapError as exc:
        print(f"ce-bootstrap: error: {exc}; ce stays idle", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
