"""Payload errors: the installer store (manifest, versions, checksums) and first-boot staging."""
from __future__ import annotations

from .base import CeError


class PayloadError(CeError):
    code = "payload_error"
    action = "check the payload store named in the message (its manifest.json and the files it lists)"


class PayloadStoreInvalid(PayloadError):
    code = "payload_store_invalid"
    action = "give params.payloads (or configure the service's store): a directory with a valid manifest.json"


class PayloadStoreRefused(PayloadError):
    code = "payload_store_refused"
    action = ("leave params.payloads out: over the server a step uses the payload store of the service's bootstrap "
              "(payloads), or none")


class PayloadMissing(PayloadError):
    code = "payload_missing"
    action = "add the component and version the message names to the payload store, or ask for one it has"


class PayloadMismatch(PayloadError):
    code = "payload_mismatch"
    action = "the file differs from its manifest entry (truncated or replaced): copy it into the store again"


class SetupInProgress(CeError):
    code = "setup_in_progress"
    action = "the image is in the middle of Windows Setup (sysprep / OOBE): finish or undo that, then prepare"


class InvalidFirstBootAction(CeError):
    code = "invalid_first_boot_action"
    action = "a first-boot action or parameter ce would stage is malformed: report it (ce never stages it)"


class FirstBootPlanUnreadable(CeError):
    code = "first_boot_plan_unreadable"
    action = "the image's ce-firstboot\\plan.json was not written by ce: remove the folder in Windows, then retry"
