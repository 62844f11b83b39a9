"""TLS policies: the server's mutual-TLS context, and outbound HTTPS sessions that follow a job's policy.

Outbound, the service exposes three knobs for vCenter / Prism / XenServer, and so does ce for its callback:

* ``ca``: an extra trust anchor (PEM) on top of the public CAs -- a private CA, or the peer's own self-signed
  certificate (partial chains are accepted, so a leaf certificate can be its own anchor);
* ``sha1_fingerprint``: trust exactly the peer certificate with this SHA-1 fingerprint, nothing else (chain and
  name are not checked: the pin is the whole check);
* ``check_hostname``: off for peers reached by an address their certificate does not name; the chain is still
  verified.
"""
from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from .errors import TlsConfigError

SHA1_HEX = re.compile(r"^[0-9a-f]{40}$")


def normalize_sha1(fingerprint: str) -> str:
    """"AB:CD:..." or "abcd..." -> 40 lowercase hex digits."""
    hexed = fingerprint.replace(":", "").replace(" ", "").lower()
    if not SHA1_HEX.match(hexed):
        raise TlsConfigError(f"sha1_fingerprint {fingerprint!r} is not a SHA-1 fingerprint: expected 40 hex digits, "
                             "with or without colons")
    return hexed


@dataclass(frozen=True)
class OutboundPolicy:
    ca: Path | None = None
    sha1_fingerprint: str | None = None
    check_hostname: bool = True

    def __post_init__(self):
        if self.ca and self.sha1_fingerprint:
            raise TlsConfigError("give either an extra CA certificate or a SHA-1 fingerprint pin, not both")
        if self.ca and not Path(self.ca).is_file():
            raise TlsConfigError(f"CA certificate {self.ca} does not exist")
        if self.sha1_fingerprint:
            object.__setattr__(self, "sha1_fingerprint", normalize_sha1(self.sha1_fingerprint))

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.sha1_fingerprint:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        if self.ca:
            try:
                ctx.load_verify_locations(cafile=str(self.ca))
            except (ssl.SSLError, OSError) as exc:
                raise TlsConfigError(f"cannot load CA certificate {self.ca}: {exc}") from None
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.check_hostname = self.check_hostname
        return ctx


class PolicyAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections use the policy's context (and fingerprint pin, when there is one)."""

    def __init__(self, policy: OutboundPolicy, **kwargs):
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self.policy.ssl_context()
        if self.policy.sha1_fingerprint:
            kwargs["assert_fingerprint"] = self.policy.sha1_fingerprint
        elif not self.policy.check_hostname:
            kwargs["assert_hostname"] = False
        return super().init_poolmanager(*args, **kwargs)


def outbound_session(policy: OutboundPolicy, client_cert: tuple[str, str] | None = None,
                     max_retries=0) -> requests.Session:
    """A requests session for HTTPS that verifies peers exactly as ``policy`` says (``max_retries``: an int or a
    urllib3 ``Retry``)."""
    session = requests.Session()
    session.trust_env = False            # no proxy or CA bundle from the environment behind the policy's back
    session.mount("https://", PolicyAdapter(policy, max_retries=max_retries))
    session.mount("http://", HTTPAdapter(max_retries=max_retries))
    # With a pin, the fingerprint is the check; chain validation would reject a self-signed peer first. With an
    # extra CA, naming it here stops requests from loading its whole CA bundle into the context on every new
    # connection (60 ms each, measured); the context already holds the system's public CAs.
    session.verify = False if policy.sha1_fingerprint else str(policy.ca) if policy.ca else True
    if client_cert:
        session.cert = client_cert
    return session


def server_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """Server side of mutual TLS: TLS 1.2+, a client certificate signed by ``client_ca`` is required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
        ctx.load_verify_locations(cafile=str(client_ca))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot load the server's TLS material ({cert}, {key}, {client_ca}): {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
