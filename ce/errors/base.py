"""The base of every error ce reports: a stable ``code``, an HTTP ``status`` and one ``action`` line.

``code`` is what the connector and the tests match on; ``message`` is one human sentence about this occurrence
(what is wrong and what to do); ``status`` is the HTTP status the server answers with when the error refuses a
request outright (a step that fails later reports it in the step document, with the same code); ``action`` says,
once per class, what the connector (or an operator) should do about it -- the README's table of codes lists it.
"""
from __future__ import annotations

from contextlib import contextmanager


class CeError(Exception):
    """Base class: ``code`` is stable, ``message`` is one actionable line."""

    code = "ce_error"
    status = 422
    action = "read the message: it names what is wrong and what to change"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


@contextmanager
def naming_field(field: str):
    """A refusal raised inside is about the request field ``field`` (the server reports it as ``error.field``)."""
    try:
        yield
    except CeError as exc:
        if getattr(exc, "field", None) is None:
            exc.field = field
        raise


def first_problem(exc, prefix: str = "", top: str = "") -> tuple[str, str | None]:
    """(message, field) for a pydantic ValidationError: the first problem named by its field (under ``prefix``;
    ``top`` when it is about the whole document) and how many more there are."""
    errors = exc.errors()
    field = ".".join(str(p) for p in errors[0]["loc"]) or None
    where = f"{prefix}.{field}" if prefix and field else field or prefix or top
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}: {errors[0]['msg']}{more}", field


def catalogue() -> dict[str, type[CeError]]:
    """Every error class ce defines, by code (the classes of ``ce.errors``' group modules)."""
    found: dict[str, type[CeError]] = {}
    pending = [CeError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("ce.errors"):
            found.setdefault(cls.code, cls)
    return found
