"""Server errors: requests to the step server, its bootstrap, TLS and the client side of the connector API."""
from __future__ import annotations

from .base import CeError
