"""The step document (``GET /v1/steps/{id}``, the callback, the 202 of create and cancel), and the encoded bodies the
pollers are served.

Hundreds of connectors poll a step every second or so while it changes a few times a second at most, so the body
is encoded once per change of the store rather than per poll: a poll that finds the store unchanged costs a dict
lookup instead of a SQLite read, a JSON decode and an encode. Every body carries a strong ``ETag`` (a digest of its
bytes), so a poller that sends ``If-None-Match`` gets ``304 Not Modified`` while nothing changed.
"""
from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timezone

from ..document import SCHEMA_VERSION
from .store import Store

CACHED_STEPS = 256          # bodies kept; a CE runs a handful of steps per job


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z") \
        if ts else None


def step_doc(row: dict) -> dict:
    return {"schemaVersion": SCHEMA_VERSION, "id": row["id"], "type": row["type"], "status": row["status"], "progressPercent": row["progress"],
            "message": row["message"], "warnings": row["warnings"], "error": row["error"], "result": row["result"],
            "params": row["params"], "timeoutSeconds": row["timeout"], "createdAt": iso(row["created"]),
            "startedAt": iso(row["started"]), "finishedAt": iso(row["finished"]), **(row.get("transfer") or {})}


class StepBodies:
    """``body(step_id) -> (json_bytes, etag) | None``, re-read from the store only after the store changed."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._bodies: dict[str, tuple[int, bytes, str]] = {}

    def body(self, step_id: str) -> tuple[bytes, str] | None:
        generation = self.store.generation          # read first: a change racing the read below re-reads next time
        cached = self._bodies.get(step_id)
        if cached and cached[0] == generation:
            return cached[1], cached[2]
        row = self.store.get(step_id)
        if row is None:
            return None
        body = json.dumps(step_doc(row), sort_keys=True, separators=(",", ":")).encode() + b"\n"
        etag = hashlib.sha256(body).hexdigest()[:32]
        with self._lock:
            if len(self._bodies) >= CACHED_STEPS:
                self._bodies.clear()
            self._bodies[step_id] = (generation, body, etag)
        return body, etag
