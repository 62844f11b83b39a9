"""Step errors: parameters, plans, cancel / timeout and a step's own outcome."""
from __future__ import annotations

from .base import CeError


class InvalidParams(CeError):
    """The one invalid-parameters error: raised before any work, naming the field when there is one."""
    code = "invalid_params"
    status = 422
    action = "fix the parameter named in error.field and submit again"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def to_dict(self) -> dict:
        return {**super().to_dict(), **({"field": self.field} if self.field else {})}


class Canceled(CeError):
    """The one cancel: every mechanism that stops early for a cancel raises this (or TimedOut)."""
    code = "canceled"
    status = 409
    action = "the step was canceled as asked; nothing is left under a final name"


class TimedOut(Canceled):
    code = "step_timeout"
    action = "the step ran out of its timeout: raise params.timeout or retry when the system is less loaded"


class StepFailed(CeError):
    """A step that stopped part-way but still has an exact result (what was and was not done)."""
    status = 500
    action = "the step's result says what was and was not done; fix the cause in the message and run it again"

    def __init__(self, code: str, message: str, result: dict):
        super().__init__(message)
        self.code, self.result = code, result


# ---------------------------------------------------------------- plans

class ImageChangedSincePlan(CeError):
    code = "image_changed_since_plan"
    status = 409
    action = "the disk or file changed between plan and apply: run the step again (it plans afresh)"


class PlanConflict(CeError):
    code = "plan_conflict"
    action = "two options want different values for the same registry value or file: drop one of them"


class RegistryTypeUnknown(CeError):
    code = "registry_type_unknown"
    action = "use a registry type name Windows knows (REG_SZ, REG_DWORD, REG_MULTI_SZ, ...)"


class RegistryHiveUnknown(CeError):
    code = "registry_hive_unknown"
    action = "name one of the hives SYSTEM, SOFTWARE, SECURITY, SAM or DEFAULT"


class FileWriteFailed(CeError):
    code = "file_write_failed"
    status = 500
    action = "the file's upload into the image did not read back right (nothing replaced it): run the step again"


# ---------------------------------------------------------------- steps' own checks

class HashMismatch(CeError):
    code = "hash_mismatch"
    action = "the disk is not the one expected (or was damaged in transit): check the source and copy it again"


class Md5Mismatch(CeError):
    code = "md5_mismatch"
    action = "the attached disk is not the one the job was made for: attach the right disk; nothing was changed"


class VDiskInUse(CeError):
    code = "vdisk_in_use"
    status = 409
    action = "PVS has the vDisk open: take it off its targets (or remove the stale .lok) and publish again"


class DiskNotEmpty(CeError):
    code = "disk_not_empty"
    status = 409
    action = "the output disk holds data: attach an empty disk, or set overwriteOutput to replace what it holds"


class ImageFormatMismatch(CeError):
    code = "image_format_mismatch"
    action = "inputImageFormat does not match the file on the share: correct it or leave it out"


class InvalidJob(CeError):
    code = "invalid_job"
    action = 'fix the job file: {"type": "<step>", "params": {...}}'
