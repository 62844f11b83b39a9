"""Payload errors: the installer store (manifest, versions, checksums) and first-boot staging."""
from __future__ import annotations

from .base import CeError
