"""Diagnostics errors: the bundle of logs and data the diagnostics step gathers (steps/diagnostics.py)."""
from __future__ import annotations

from .base import CeError


class DiagnosticsCopyMismatch(CeError):
    code = "diagnostics_copy_mismatch"
    status = 500
    action = ("a file copied from the image did not have the image's sha256 (a failing disk or appliance): nothing "
              "was uploaded; run the step again, and check the disk if it repeats")


class DiagnosticsBundleBroken(CeError):
    code = "diagnostics_bundle_broken"
    status = 500
    action = ("the zip did not read back before upload (scratch disk failing or full): nothing was uploaded; free "
              "or fix the scratch space (CE_SCRATCH) and run the step again")
