"""SMB errors: shares, their accounts, files on them and transfers to and from them."""
from __future__ import annotations

from .base import CeError
