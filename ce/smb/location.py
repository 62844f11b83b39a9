r"""Where a job's bytes go: ``SmbLocation`` (host, share, folder, port) parsed from ``\\host\share\folder``,
``//host/share/folder`` or ``smb://host[:port]/share/folder``, and ``Credentials``, the account that signs in."""
from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

from ..errors import SmbPathRefused
from .paths import check_component, normalize_path

HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$")


@dataclass(frozen=True)
class Credentials:
    """A job's SMB account. The password stays out of repr() and str(), so out of logs and error reports."""
    username: str
    password: str = field(repr=False)
    domain: str = ""

    @property
    def principal(self) -> str:
        return f"{self.domain}\\{self.username}" if self.domain else self.username


@dataclass(frozen=True)
class SmbLocation:
    """A folder on a share: ``host``, ``share`` and ``folder`` (backslash-separated, "" for the share root)."""
    host: str
    share: str
    folder: str = ""
    port: int | None = None

    @classmethod
    def parse(cls, location: str) -> "SmbLocation":
        r"""Accepts ``\\host\share\folder``, ``//host/share/folder`` and ``smb://host[:port]/share/folder``."""
        text = location.strip()
        if "@" in text:
            # Do not echo the text: it may be user:password@host.
            raise SmbPathRefused("an SMB location must not carry credentials or '@'; give "
                                 r"\\host\share\folder and pass the user name and password as credentials")
        if text[:6].lower() == "smb://":
            host, port, parts = _split_url(text.rstrip("/"))
        elif text[:2] in ("\\\\", "//"):
            host, *parts = re.split(r"[\\/]", text[2:].rstrip("\\/"))
            port = None
        else:
            raise SmbPathRefused(rf"{location!r} is not an SMB location: use \\host\share\folder, "
                                 "//host/share/folder or smb://host[:port]/share/folder")
        if not HOST_RE.match(host) or not parts:
            raise SmbPathRefused(f"{location!r} needs a host name and a share name, as in \\\\host\\share\\folder")
        share, folder = parts[0], "\\".join(parts[1:])
        check_component(share, location)
        return cls(host, share, normalize_path(folder) if folder else "", port)

    @property
    def share_unc(self) -> str:
        return f"\\\\{self.host}\\{self.share}"

    def __str__(self) -> str:
        return self.share_unc + (f"\\{self.folder}" if self.folder else "")


def _split_url(text: str) -> tuple[str, int | None, list[str]]:
    url = urllib.parse.urlsplit(text)
    if url.query or url.fragment:
        raise SmbPathRefused(f"{text!r}: an smb:// location has no query or fragment")
    try:
        port = url.port
    except ValueError:
        raise SmbPathRefused(f"{text!r} has an invalid port") from None
    return url.hostname or "", port, urllib.parse.unquote(url.path).split("/")[1:]
