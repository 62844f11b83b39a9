"""Which ports a step may reach an SMB server on: 445 unless the service's bootstrap allows others (``smb_ports``).

The CE image's firewall lets outbound traffic go to 445 and 443 only, and a step that connects wherever its params
say is a way to probe the network behind the CE. So a step the server runs may use only the ports its bootstrap
allows; the command line, on the operator's own machine, may use any. The policy in force is, in order:

* ``ports_allowed(ports)`` around code in this context (the server, while it validates a request's params);
* ``$CE_SMB_PORTS`` (comma-separated ports, or ``any``): the server gives it to each step's process;
* neither: any port (the command line).

``StorageLocation`` checks it when params are validated (at submit, naming the field, and again in the step's
process) and ``ShareSession`` once more before it opens a connection.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterable, Iterator

DEFAULT_PORT = 445
PORTS_ENV = "CE_SMB_PORTS"
ANY = "any"

_UNSET = object()
_allowed: ContextVar = ContextVar("ce_smb_ports", default=_UNSET)


def parse_ports(text: str) -> frozenset[int] | None:
    """``"445,8445"`` -> the ports; ``"any"`` -> None (no restriction). Anything else is refused: a malformed
    policy must not read as "any port"."""
    if text.strip().lower() == ANY:
        return None
    try:
        ports = frozenset(int(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"{PORTS_ENV}={text!r} is neither '{ANY}' nor comma-separated port numbers") from None
    if not ports or not all(0 < p < 65536 for p in ports):
        raise ValueError(f"{PORTS_ENV}={text!r}: ports are 1 to 65535")
    return ports


def format_ports(ports: Iterable[int] | None) -> str:
    """The ``$CE_SMB_PORTS`` value of a policy (None: any port)."""
    return ANY if ports is None else ",".join(str(p) for p in sorted(set(ports)))


def allowed_ports() -> frozenset[int] | None:
    """The ports SMB connections may use here; None when any port may."""
    value = _allowed.get()
    if value is not _UNSET:
        return value
    text = os.environ.get(PORTS_ENV)
    return None if text is None else parse_ports(text)


@contextmanager
def ports_allowed(ports: Iterable[int] | None) -> Iterator[None]:
    """Inside, the policy is ``ports`` (None: any port), whatever the environment says."""
    token = _allowed.set(None if ports is None else frozenset(ports))
    try:
        yield
    finally:
        _allowed.reset(token)


def refusal(port: int | None) -> str | None:
    """Why a connection to ``port`` (None: the default, 445) is not allowed here, or None when it is."""
    allowed = allowed_ports()
    port = port or DEFAULT_PORT
    if allowed is None or port in allowed:
        return None
    default = " (the default)" if port == DEFAULT_PORT else ""
    return (f"port {port}{default} is not an SMB port this service may connect to (allowed: "
            f"{', '.join(map(str, sorted(allowed)))}); use an allowed port, or list the port in the bootstrap's "
            f"smb_ports")
