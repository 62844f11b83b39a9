"""``python -m ce.errors``: the README's table of error codes, generated from ``catalogue()``.

Paste its output under "Error codes" in README.md; tests/unit/test_errors.py fails while the two differ.
"""
from __future__ import annotations

from . import catalogue
from .base import CeError

GROUPS = ("base", "disk", "guest", "registry", "smb", "payload", "diagnostics", "step", "server", "uefi")
HEADER = ["| code | HTTP status | group | what to do |", "|---|---|---|---|"]


def group(cls: type[CeError]) -> str:
    """The group of an error class: the ``ce.errors`` module that defines it."""
    return cls.__module__.rpartition(".")[2]


def row(cls: type[CeError]) -> str:
    return f"| `{cls.code}` | {cls.status} | {group(cls)} | {cls.action.replace('|', '&#124;')} |"


def table() -> list[str]:
    """The table's lines: by group (in the catalogue's order), then by code."""
    order = {name: i for i, name in enumerate(GROUPS)}
    classes = sorted(catalogue().values(), key=lambda c: (order.get(group(c), len(GROUPS)), c.code))
    return [*HEADER, *(row(c) for c in classes)]


if __name__ == "__main__":
    print("\n".join(table()))
