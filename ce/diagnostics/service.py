"""ce's own side of the diagnostics bundle (``ceLogs``): the step store's documents and logs, the service's journal,
and what this ce is (``ce/about.json``).

Under the server the step process learns the state directory from ``CE_STATE_DIR`` (``Bootstrap.step_env``) and
opens the step store read-only (SQLite ``mode=ro``: the service keeps writing while it is read). One CE VM serves one
job, so every step in the store is this job's: each step's document exactly as ``GET /v1/steps/{id}`` gives it
(params in their public form: a password is ``**********`` there already) and its log lines. The journal of
``ce.service`` and ``ce-bootstrap.service`` comes from ``journalctl`` (the image keeps a persistent journal); when
it cannot be read the manifest says why. On the command line ``CE_STATE_DIR`` is unset unless an operator on a CE
VM points it at ``/var/lib/ce``; then only ``about.json`` is collected and the manifest says so.

Everything is passed through ``ce.logs.redact`` (the secrets this process knows: the step's own SMB password and any
bearer token), the safety net every log line gets.
"""
from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import logs
from ..server.stepdocs import step_doc
from ..server.store import STATE_ENV, STORE_FILE, decode
from .evtx import parser_version

JOURNAL_UNITS = ("ce.service", "ce-bootstrap.service")
JOURNAL_LINES = 50_000
JOURNAL_SECONDS = 60


def state_dir() -> Path | None:
    value = os.environ.get(STATE_ENV, "")
    return Path(value) if value else None


def about() -> dict:
    try:
        ce_version = version("ce")
    except PackageNotFoundError:
        ce_version = "unknown"
    return {"ce": ce_version, "python": platform.python_version(), "host": platform.node(),
            "kernel": platform.release(), "parser": parser_version(), "stateDir": str(state_dir() or ""),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def store_rows(directory: Path | None) -> tuple[list[dict], str]:
    """The step rows of the store under ``directory`` (oldest first), or ([], why not)."""
    if directory is None:
        return [], f"no step store: {STATE_ENV} is not set (not running under `ce serve`)"
    path = directory / STORE_FILE
    if not path.is_file():
        return [], f"no step store at {path}"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            rows = [decode(r) for r in db.execute("SELECT * FROM steps ORDER BY created")]
            for row in rows:
                row["log"] = [dict(r) for r in db.execute(
                    "SELECT seq, time, level, message FROM step_log WHERE step_id = ? ORDER BY seq", (row["id"],))]
        finally:
            db.close()
    except sqlite3.Error as exc:
        return [], f"the step store {path} could not be read: {exc}"
    return rows, ""


def documents(rows: list[dict]) -> list[tuple[str, bytes]]:
    """(name in the bundle, bytes) for each step: its document and its log, redacted."""
    out = []
    for row in rows:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in row["id"])[:100]
        out.append((f"ce/steps/{name}.json",
                    logs.redact(json.dumps(step_doc(row), indent=2, default=str) + "\n").encode()))
        lines = "".join(f"{r['time']} {r['level']:<7} {r['message']}\n" for r in row["log"])
        out.append((f"ce/steps/{name}.log", logs.redact(lines).encode()))
    return out


def journal(directory: Path | None) -> tuple[bytes | None, str]:
    """The service's journal lines (redacted), or (None, why not)."""
    if directory is None:
        return None, f"no service journal: {STATE_ENV} is not set (not running under `ce serve`)"
    command = ["journalctl", "--no-pager", "-o", "short-iso-precise", "-n", str(JOURNAL_LINES)]
    for unit in JOURNAL_UNITS:
        command += ["-u", unit]
    try:
        done = subprocess.run(command, capture_output=True, timeout=JOURNAL_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"journalctl could not be run: {exc}"
    text = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0 or not text.strip() or text.startswith("-- No entries --"):
        reason = " ".join(done.stderr.decode("utf-8", "replace").split())[:200] or "no entries"
        return None, f"the journal of {', '.join(JOURNAL_UNITS)} could not be read ({reason})"
    return logs.redact(text).encode(), ""


def step_lines(rows: list[dict]) -> list[str]:
    """summary.txt's part on ce's steps: one line each, with the error that stopped it."""
    if not rows:
        return ["  none in the step store"]
    lines = []
    for row in rows:
        error = row.get("error") or {}
        tail = f": [{error.get('code')}] {error.get('message', '')}" if error else ""
        warnings = f", {len(row['warnings'])} warning(s)" if row.get("warnings") else ""
        lines.append(logs.redact(f"  {row['id']}  {row['type']}  {row['status']}{warnings}{tail}"))
    return lines
