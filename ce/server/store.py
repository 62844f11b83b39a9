"""Step state in SQLite (WAL) under the bootstrap's ``state_dir``, so a restarted service still knows its steps.

Only the public form of params is stored (SecretStr fields dump as ``**********``) plus an HMAC of the full params
for the idempotency check: no secret reaches the file. Still, the state is the service's alone: ``state_dir`` is
0700 and the database with its ``-wal`` / ``-shm`` files 0600 whatever the umask, and wider modes found on start-up
are tightened.

On start-up every step left ``pending`` or ``running`` is marked ``failed`` with error ``interrupted``; each row
keeps the identity of its step process (``worker``: pid, start time, boot id), so the new service can find and stop
what the previous one left running (ce.server.supervisor.stop_orphans).
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

from ..errors import BootstrapInvalid, Interrupted

log = logging.getLogger("ce.server")
STORE_FILE = "ce.sqlite"                # under the bootstrap's state_dir
STATE_ENV = "CE_STATE_DIR"              # the state_dir, for step processes (Bootstrap.step_env): diagnostics reads it
ACTIVE = ("pending", "running")
JSON_COLUMNS = ("params", "disks", "warnings", "error", "result", "worker", "transfer")
DIR_MODE, FILE_MODE = 0o700, 0o600
SIDE_FILES = ("-wal", "-shm", "-journal")       # SQLite's own, next to the database

SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    params TEXT NOT NULL,
    params_hmac TEXT NOT NULL,
    disks TEXT NOT NULL,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    warnings TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    result TEXT,
    timeout INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    worker TEXT,
    transfer TEXT
);
CREATE TABLE IF NOT EXISTS step_log (
    step_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (step_id, seq)
);
"""


class Store:
    def __init__(self, path: Path):
        private_state(path)
        self.path = path
        self._lock = threading.Lock()
        self.generation = 0                 # bumped by every write of a step row: cached documents compare it
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(steps)")}
            for column in ("worker", "transfer"):   # a state file from before the column
                if column not in columns:
                    self._db.execute(f"ALTER TABLE steps ADD COLUMN {column} TEXT")
        private_state(path)                         # -wal and -shm exist now

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ steps

    def insert(self, row: dict) -> None:
        row = {**row, **{k: json.dumps(row[k]) for k in JSON_COLUMNS if k in row and row[k] is not None}}
        cols = ", ".join(row)
        with self._lock:
            self._db.execute(f"INSERT INTO steps ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
            self.generation += 1

    def get(self, step_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM steps WHERE id = ?", (step_id,)).fetchone()
        return decode(row) if row else None

    def active(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM steps WHERE status IN {ACTIVE}").fetchall()
        return [decode(r) for r in rows]

    def update(self, step_id: str, **fields) -> None:
        fields = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE steps SET {sets} WHERE id = ?", [*fields.values(), step_id])
            self.generation += 1

    def finish(self, step_id: str, status: str, **fields) -> bool:
        """Move an active step to a terminal status; False if it was already terminal (first finisher wins)."""
        fields = {"status": status, "finished": time.time(), **fields}
        fields = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            cur = self._db.execute(f"UPDATE steps SET {sets} WHERE id = ? AND status IN {ACTIVE}",
                                   [*fields.values(), step_id])
            self.generation += 1
        return cur.rowcount == 1

    def mark_interrupted(self) -> list[dict]:
        """Steps a previous service left active: failed, ``interrupted``. Returns their rows as they were (with
        ``disks`` and ``worker``, for stopping what is left of them)."""
        error = Interrupted("the ce service restarted while this step ran; its work was stopped part-way: run the "
                            "step again with a new id").to_dict()
        with self._lock:
            rows = [decode(r) for r in self._db.execute(f"SELECT * FROM steps WHERE status IN {ACTIVE}")]
            self._db.execute(f"UPDATE steps SET status = 'failed', error = ?, finished = ? WHERE status IN {ACTIVE}",
                             (json.dumps(error), time.time()))
            self.generation += 1
        return rows

    # ------------------------------------------------------------ log

    def append_log(self, step_id: str, time_text: str, level: str, message: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO step_log (step_id, seq, time, level, message) VALUES "
                             "(?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM step_log WHERE step_id = ?), ?, ?, ?)",
                             (step_id, step_id, time_text, level, message))

    def log(self, step_id: str, since: int = 0, limit: int = 1000) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT seq, time, level, message FROM step_log WHERE step_id = ? AND seq > ? "
                                    "ORDER BY seq LIMIT ?", (step_id, since, limit)).fetchall()
        return [dict(r) for r in rows]


def private_state(path: Path) -> None:
    """``path``'s directory 0700 (created so), the database and SQLite's side files 0600 (created empty so, if
    missing, for SQLite gives its side files the database's mode). A world-writable sticky directory (``/tmp``) is
    refused: it is not the service's to close, and others could plant files under the names SQLite opens."""
    directory = path.parent
    for missing in reversed([d for d in (directory, *directory.parents) if not d.exists()]):
        try:
            missing.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
    info = directory.stat()
    if info.st_mode & stat.S_ISVTX and info.st_mode & stat.S_IWOTH:
        raise BootstrapInvalid(f"state_dir {directory} is a shared directory (mode {stat.S_IMODE(info.st_mode):o}): "
                               f"give the service a directory of its own")
    set_mode(directory, DIR_MODE, info)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in SIDE_FILES)):
        try:
            set_mode(file, FILE_MODE, file.stat())
        except FileNotFoundError:
            pass


def set_mode(path: Path, mode: int, info: os.stat_result) -> None:
    current = stat.S_IMODE(info.st_mode)
    if current != mode:
        os.chmod(path, mode)
        log.info("state: %s was mode %o, now %o", path, current, mode)


def decode(row: sqlite3.Row) -> dict:
    out = dict(row)
    for k in JSON_COLUMNS:
        if out.get(k) is not None:
            out[k] = json.loads(out[k])
    return out
