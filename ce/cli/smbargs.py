r"""SMB locations on the command line: ``\\host\share\folder[\file]``, ``//host/share/...`` or
``smb://host[:port]/share/...``. The password comes from ``$CE_SMB_PASSWORD`` or a prompt, never from the command
line (it would show in ``ps`` and the shell history); the user name from ``--user`` or ``$CE_SMB_USER``."""
from __future__ import annotations

import getpass
import os
import re
import sys

from ..errors import InvalidParams
from ..smb import SmbLocation

PASSWORD_ENV, USER_ENV, DOMAIN_ENV = "CE_SMB_PASSWORD", "CE_SMB_USER", "CE_SMB_DOMAIN"
SMB_PREFIX = re.compile(r"^(\\\\|//|smb://)", re.IGNORECASE)
FORMAT_NAMES = {"vhdx": "VhdxDiskFormat", "vhd": "VhdDiskFormat"}


def add_account_arguments(p) -> None:
    p.add_argument("--user", help=f"SMB user name (default ${USER_ENV}); password from ${PASSWORD_ENV} or a prompt")
    p.add_argument("--domain", help=f"SMB account's domain (default ${DOMAIN_ENV})")
    p.add_argument("--port", type=int, help="SMB port (default 445, or the one in an smb:// URL)")
    p.add_argument("--encrypt", action="store_true", help="require SMB3 encryption")


def location_flags(param: str, argument: str) -> dict[str, str]:
    """The flags that set an SMB location param (``outputStorageLocation``) given as ``argument`` (``LOCATION``)."""
    return {param: argument, f"{param}.Location": argument, f"{param}.port": "--port", f"{param}.encrypt": "--encrypt",
            f"{param}.credentials.username": "--user", f"{param}.credentials.domain": "--domain",
            f"{param}.credentials.password": f"${PASSWORD_ENV}", f"{param}.credentials": "--user"}


def is_smb(text: str) -> bool:
    return bool(SMB_PREFIX.match(text))


def split_file(text: str) -> tuple[str, str]:
    r"""\\host\share\folder\file -> (\\host\share\folder, file)."""
    parsed = SmbLocation.parse(text)
    if not parsed.folder:
        raise InvalidParams(f"{text!r} names a share, not a file on it: add the file name")
    folder, _, name = parsed.folder.rpartition("\\")
    if parsed.port:
        return f"smb://{parsed.host}:{parsed.port}/{parsed.share}" + (f"/{folder.replace(chr(92), '/')}" if folder
                                                                       else ""), name
    return str(SmbLocation(parsed.host, parsed.share, folder)), name


def storage(args, location: str) -> dict:
    user = args.user or os.environ.get(USER_ENV)
    if not user:
        raise InvalidParams(f"an SMB location needs a user name: --user NAME or ${USER_ENV}")
    return {"Location": location, "port": args.port, "encrypt": args.encrypt,
            "credentials": {"username": user, "password": _password(user),
                            "domain": args.domain or os.environ.get(DOMAIN_ENV, "")}}


def _password(user: str) -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password is not None:
        return password
    if not sys.stdin.isatty():
        raise InvalidParams(f"no SMB password: set ${PASSWORD_ENV} (it is never taken from the command line)")
    return getpass.getpass(f"SMB password for {user}: ")
