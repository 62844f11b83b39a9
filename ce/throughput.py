"""How fast a data path moves: bytes per second over the last few seconds of one phase (a stall shows within the
window, where an average since the start would hide it), and the camelCase keys that carry the byte figures in the
CLI's machine-readable lines and the server's step document."""
from __future__ import annotations

from collections import deque

from .sizes import human_size

WINDOW = 5.0        # seconds of reports the rate is taken over
TRANSFER_KEYS = ("bytesDone", "bytesTotal", "bytesPerSecond")


class Throughput:
    """``add(now, done, phase)`` for each report of a phase's bytes done; ``rate(now)`` in bytes per second over the
    last ``window`` seconds up to ``now`` (a report that did not move lowers it), None before it can be told. A new
    phase, or bytes done going back, starts over."""

    def __init__(self, window: float = WINDOW):
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()
        self.phase: str | None = None

    def add(self, now: float, done: int, phase: str = "") -> None:
        if phase != self.phase or (self.samples and done < self.samples[-1][1]):
            self.samples.clear()
            self.phase = phase
        self.samples.append((now, done))
        while len(self.samples) > 1 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()      # the oldest kept is the last one at or before the window's start

    def rate(self, now: float) -> float | None:
        if len(self.samples) < 2:
            return None
        since = max(self.samples[0][0], now - self.window)
        if now <= since:
            return None
        return max(self.samples[-1][1] - self._done_at(since), 0) / (now - since)

    def _done_at(self, when: float) -> float:
        """Bytes done at ``when``, read off the line between the two reports around it."""
        earlier = self.samples[0]
        for later in self.samples:
            if later[0] >= when:
                span = later[0] - earlier[0]
                return later[1] if span <= 0 else earlier[1] + (later[1] - earlier[1]) * (when - earlier[0]) / span
            earlier = later
        return self.samples[-1][1]


def figures(transferred: tuple[int, int] | None, rate: float | None) -> str:
    """``1.7 GiB / 4 GiB  210 MiB/s  `` (the rate once known) for a bar; nothing for work that moves no bytes."""
    if transferred is None:
        return ""
    speed = f"{human_size(rate)}/s  " if rate is not None else ""
    return f"{human_size(transferred[0])} / {human_size(transferred[1])}  {speed}"


def transfer_fields(transferred: tuple[int, int] | None, rate: float | None) -> dict:
    """``{"bytesDone", "bytesTotal", "bytesPerSecond"}``, each only when known."""
    if transferred is None:
        return {}
    fields = {"bytesDone": int(transferred[0]), "bytesTotal": int(transferred[1])}
    return fields if rate is None else {**fields, "bytesPerSecond": int(rate)}
