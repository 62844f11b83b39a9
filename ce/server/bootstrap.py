"""The per-job bootstrap file: how a CE VM learns its token, TLS material, connector callback and disks.

``bootstrap.json`` (relative paths are relative to the file's directory)::

    {"version": 1, "token": "...", "listen": "0.0.0.0:443",
     "tls": {"cert": "server.crt", "key": "server.key", "client_ca": "client-ca.crt"},
     "callback": {"url": "https://connector:8443/ce/steps", "ca": "callback-ca.crt",
                  "sha1_fingerprint": null, "check_hostname": true},
     "state_dir": "/var/lib/ce", "disks": ["/dev/sdb"], "payloads": "/var/lib/ce/payloads", "smb_ports": [445]}

``token`` and ``tls`` are required; ``callback`` is optional (vSphere deployments) and takes at most one of ``ca``
/ ``sha1_fingerprint``. ``disks`` lists what steps may touch (paths or globs); without it every whole block device
that holds no mounted filesystem of the CE itself.

What steps may reach besides disks: ``payloads``, the one payload store a step may use (a step's ``params.payloads``
may only name it; without it no store at all), and ``smb_ports``, the ports a step may connect to SMB servers on
(default ``[445]``, what the CE image's firewall lets out; ``"any"`` lifts the limit). Steps run in processes of
their own and get these through their environment (``step_env``); the app checks a request's params against them
before a step is created.
"""
from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import BootstrapInvalid, TlsConfigError, first_problem
from ..payloads import STORE_ENV
from ..smb import ports as smb_ports
from .store import STATE_ENV
from ..tls import OutboundPolicy, normalize_sha1

MIN_TOKEN = 32
CONFIG_DRIVE_LABELS = ("CEBOOT",)


class TlsFiles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cert: Path
    key: Path
    client_ca: Path


class Callback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    ca: Path | None = None
    sha1_fingerprint: str | None = None
    check_hostname: bool = True

    @field_validator("url")
    @classmethod
    def _https(cls, v: str) -> str:
        if not v.lower().startswith("https://") or len(v) <= len("https://"):
            raise ValueError("must be an https:// URL: callbacks carry the job's token")
        return v

    @field_validator("sha1_fingerprint")
    @classmethod
    def _sha1(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return normalize_sha1(v)
        except TlsConfigError as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _one_trust_source(self):
        if self.ca and self.sha1_fingerprint:
            raise ValueError("give either ca or sha1_fingerprint, not both")
        return self

    def policy(self) -> OutboundPolicy:
        return OutboundPolicy(ca=self.ca, sha1_fingerprint=self.sha1_fingerprint, check_hostname=self.check_hostname)


class Bootstrap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    token: str = Field(min_length=MIN_TOKEN, repr=False)
    listen: str = "0.0.0.0:443"
    tls: TlsFiles
    callback: Callback | None = None
    state_dir: Path = Path("/var/lib/ce")
    disks: list[str] | None = None
    payloads: Path | None = None
    smb_ports: list[int] | Literal["any"] = [smb_ports.DEFAULT_PORT]

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"version {v} is not supported; this ce reads version 1")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("listen must be HOST:PORT, e.g. 0.0.0.0:443")
        return v

    @field_validator("smb_ports")
    @classmethod
    def _smb_ports(cls, v: list[int] | str) -> list[int] | str:
        if v != smb_ports.ANY and (not v or not all(0 < p < 65536 for p in v)):
            raise ValueError('must be "any" or a non-empty list of ports (1 to 65535), e.g. [445]')
        return v

    def allowed_smb_ports(self) -> frozenset[int] | None:
        """The ports steps may connect to SMB servers on; None for any."""
        return None if self.smb_ports == smb_ports.ANY else frozenset(self.smb_ports)

    def step_env(self) -> dict[str, str]:
        """What a step's process learns of this file, through its environment: the payload store (empty: none, and
        no other directory either), the SMB ports and the state directory (the diagnostics step reads the step
        store there, read-only). Always set, so that the service's own environment never decides any of them."""
        return {STORE_ENV: str(self.payloads or ""),
                smb_ports.PORTS_ENV: smb_ports.format_ports(self.allowed_smb_ports()),
                STATE_ENV: str(self.state_dir)}

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def hmac_key(self) -> bytes:
        """A key for the idempotency fingerprint of step params, derived from (never equal to) the token."""
        return hmac.new(self.token.encode(), b"ce-step-params-v1", hashlib.sha256).digest()

    def attached_disks(self) -> list[str]:
        """The disks steps may touch, as real paths: the configured paths/globs, or every free whole disk."""
        if self.disks is None:
            return free_block_devices()
        found: list[str] = []
        for pattern in self.disks:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            found += [os.path.realpath(m) for m in matches if os.path.exists(m)]
        return list(dict.fromkeys(found))


def load(path: str | Path) -> Bootstrap:
    """Read and validate a bootstrap file; relative paths are resolved against its directory."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BootstrapInvalid(f"bootstrap file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise BootstrapInvalid(f"cannot read bootstrap file {path}: {exc}") from None
    try:
        boot = Bootstrap.model_validate(raw)
    except ValidationError as exc:
        raise BootstrapInvalid(f"{path}: {first_problem(exc, top='(top level)')[0]}") from None
    base = path.parent.resolve()
    resolve = (lambda p: p if p is None or p.is_absolute() else base / p)
    boot.tls = TlsFiles(**{k: resolve(v) for k, v in boot.tls.model_dump().items()})
    if boot.callback and boot.callback.ca:
        boot.callback.ca = resolve(boot.callback.ca)
    boot.state_dir = resolve(boot.state_dir)
    boot.payloads = resolve(boot.payloads)
    files = [(f"tls.{k}", v) for k, v in boot.tls.model_dump().items()]
    if boot.callback and boot.callback.ca:
        files.append(("callback.ca", boot.callback.ca))
    for name, file in files:
        if not Path(file).is_file():
            raise BootstrapInvalid(f"{path}: {name}: {file} does not exist")
    return boot


def free_block_devices() -> list[str]:
    """Whole disks (/sys/block, not loop/ram/optical/device-mapper) none of whose partitions -- or the LVM/RAID
    devices built on them -- is mounted here, and that are not the job's config drive."""
    mounted = {Path(line.split()[0]).resolve().name for line in Path("/proc/mounts").read_text().splitlines()
               if line.startswith("/dev/")}
    # The config drive carries this job's secrets even once unmounted: never a disk for steps.
    own = {Path(f"/dev/disk/by-label/{label}").resolve().name for label in CONFIG_DRIVE_LABELS
           if Path(f"/dev/disk/by-label/{label}").exists()}
    disks = []
    for dev in sorted(Path("/sys/block").iterdir()):
        name = dev.name
        if name.startswith(("loop", "ram", "zram", "sr", "dm-", "md", "nbd")):
            continue
        parts = [dev, *dev.glob(f"{name}*")]
        used = {p.name for p in parts} | {h.name for p in parts for h in (p / "holders").glob("*")}
        if used & (mounted | own):
            continue
        disks.append(f"/dev/{name}")
    return disks
