"""Structured logs: one JSON object per line on stderr (journald keeps them), the step id on every line, secrets
redacted.

The step id comes from a context variable (``step_scope``) or from ``extra={"step_id": ...}``; lines outside any
step carry ``"step_id": null`` so a reader can always filter on the key. Every secret the process knows of (the
bootstrap token, the SecretStr values of running steps' params) is registered with ``add_secret`` and replaced by
``**********`` in the message, the arguments and any exception text before a line is written.

A secret of ``SHORT_SECRET`` characters or more is replaced wherever it occurs. A shorter one -- an SMB password
"a" or "abc" -- cannot be told from ordinary text: replaced everywhere it would mask that letter or syllable in every
line, destroying the logs and showing anyone who reads them what the password is. So it is replaced only where it
stands as a value, as a whole token: quoted ('abc', "abc"), right after ``=`` or ``:`` (``password=abc``,
``user:abc@host``), or after a word such as "password", "secret" or "token" (``password abc``,
``password: abc``). Printed bare in a sentence it is left alone, like the same letters in any other word. ce itself
never prints a secret (params hold them as ``SecretStr``, which prints ``**********``): this is the safety net.
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
import time
from contextlib import contextmanager

from pydantic import BaseModel, SecretBytes, SecretStr

MASK = "**********"
SHORT_SECRET = 8                         # shorter secrets are replaced only where they stand as a value
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Where a short secret stands as a value: after a quote, '=' or ':', or a credential word and up to 3 separators.
_VALUE_BEFORE = r"""(?:\b(?i:password|passwd|pwd|passphrase|secret|token|credentials?)[\s'"=:]{1,3}|['"=:])"""
_step_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("ce_step_id", default=None)
_secrets: dict[str, int] = {}            # value -> reference count (two steps may share a password)
_short: dict[str, re.Pattern] = {}       # short secret -> where it stands as a value
_secrets_lock = threading.Lock()


def add_secret(value: str) -> None:
    if value:
        with _secrets_lock:
            _secrets[value] = _secrets.get(value, 0) + 1
            if len(value) < SHORT_SECRET and value not in _short:
                _short[value] = re.compile(f"({_VALUE_BEFORE}){re.escape(value)}(?!\\w)")


def remove_secret(value: str) -> None:
    with _secrets_lock:
        if _secrets.get(value, 0) > 1:
            _secrets[value] -= 1
        else:
            _secrets.pop(value, None)
            _short.pop(value, None)


def secret_values(model: BaseModel | dict | list) -> list[str]:
    """Every SecretStr / SecretBytes value inside a pydantic model (nested models, lists and dicts too)."""
    found: list[str] = []

    def walk(obj) -> None:
        if isinstance(obj, SecretStr):
            found.append(obj.get_secret_value())
        elif isinstance(obj, SecretBytes):
            found.append(obj.get_secret_value().decode("utf-8", "replace"))
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                walk(getattr(obj, name))
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple, set)):
            for v in obj:
                walk(v)

    walk(model)
    return [s for s in found if s]


def redact(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)    # longest first: one secret may contain another
        short = dict(_short)
    for secret in secrets:
        text = short[secret].sub(r"\1" + MASK, text) if secret in short else text.replace(secret, MASK)
    return _BEARER.sub(r"\1" + MASK, text)


@contextmanager
def step_scope(step_id: str | None):
    """Lines logged inside (in this thread or context) carry ``step_id``."""
    token = _step_id.set(step_id)
    try:
        yield
    finally:
        _step_id.reset(token)


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "step_id", "message"[, "exception"][, extra fields]} -- one line, redacted."""

    EXTRA = ("method", "path", "status", "duration_ms", "event", "code")

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "step_id": getattr(record, "step_id", None) or _step_id.get(),
            "message": redact(record.getMessage()),
        }
        for key in self.EXTRA:
            if hasattr(record, key):
                value = getattr(record, key)
                doc[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, ensure_ascii=False, default=str)


def json_handler(stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    return handler


def setup(level: int = logging.INFO, stream=None) -> None:
    """Route every logger (ours, gunicorn's, werkzeug's) through one JSON handler on stderr."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(json_handler(stream))
    root.setLevel(level)
    logging.getLogger("sh").setLevel(logging.WARNING)       # one INFO line per qemu-img run otherwise
