"""Every error ce reports, in one catalogue, grouped: diagnostics, disk, guest, registry, SMB, payload, step, server,
UEFI conversion.

Each class has a stable ``code`` (the connector and the tests match on it, never on messages), the HTTP
``status`` the server answers with when the error refuses a request, and one ``action`` line of what the connector
should do; ``catalogue()`` lists them all (the README's table of codes is checked against it). Import errors from
here: ``from ce.errors import DiskNotFound``.
"""
from .base import CeError, catalogue, first_problem, naming_field
from .diagnostics import *   # noqa: F401,F403
from .disk import *          # noqa: F401,F403
from .guest import *         # noqa: F401,F403
from .payload import *       # noqa: F401,F403
from .registry import *      # noqa: F401,F403
from .server import *        # noqa: F401,F403
from .smb import *           # noqa: F401,F403
from .step import *          # noqa: F401,F403
from .uefi import *          # noqa: F401,F403
