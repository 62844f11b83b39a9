"""Running steps in-process in tests."""
from __future__ import annotations

from ce.step import StepContext


class Recorder(StepContext):
    """A step context that keeps every progress report and can cancel itself at a chosen point."""

    def __init__(self, cancel_when=None):
        super().__init__()
        self.reports: list[tuple[float, str]] = []
        self.transfers: list[tuple[str, int, int]] = []      # (message, bytes done, bytes total) of data work
        self.cancel_when = cancel_when

    def progress(self, percent: float, message: str = "", transferred: tuple[int, int] | None = None) -> None:
        self.reports.append((percent, message))
        if transferred:
            self.transfers.append((message, *transferred))
        if self.cancel_when and self.cancel_when(percent, message):
            self.cancel_event.set()
