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
