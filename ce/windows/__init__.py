"""Windows on an attached disk, as mechanisms every Windows step shares (they import no step):

- ``facts``: the pydantic models of what is on the disk (``InspectReport`` and its parts);
- ``detection``: reading those facts from a launched guest (partition table, filesystems, hives);
- ``support``: which Windows releases ce edits;
- ``session``: the one-launch inspect → plan → apply session of a step that edits Windows.
"""
from .detection import UNINSTALL_VIEWS, detection_rules, inspect_guest, inspect_path, uninstall_keys
from .facts import DiskFacts, Detected, DomainFacts, InspectReport, OsFacts, StateFacts, VdaFacts
from .session import WindowsSession, apply_session, open_session, plan_session, require_writable
from .support import require_supported_windows

__all__ = ["UNINSTALL_VIEWS", "detection_rules", "inspect_guest", "inspect_path", "uninstall_keys", "DiskFacts",
           "Detected", "DomainFacts", "InspectReport", "OsFacts", "StateFacts", "VdaFacts", "WindowsSession",
           "apply_session", "open_session", "plan_session", "require_writable",
           "require_supported_windows"]
