"""A plan's or a result's registry changes as a regedit file (``.reg``) that a Windows admin can read or re-apply.

The file is what ``regedit /e`` writes: UTF-16LE with a BOM and CRLF line ends, ``Windows Registry Editor Version
5.00`` first, one ``[HKEY_...\\key]`` block per key, values in regedit's own syntax (``"name"="text"``,
``dword:0000000a``, ``hex(b):`` for a QWORD, ``hex(2):`` / ``hex(7):`` for expandable and multi strings, ``hex:``
for binary data, hex lines wrapped at 80 columns with a ``\\`` as regedit wraps them), ``"name"=-`` to delete a value
and ``[-HKEY_...\\key]`` to delete a key. Above each value a ``;`` comment says what it was and why it changes.

Only the machine's hives have a path on a running Windows (SYSTEM, SOFTWARE, SAM, SECURITY under
HKEY_LOCAL_MACHINE; DEFAULT is HKEY_USERS\\.DEFAULT). A change in any other hive -- a hive file on another
filesystem such as the ESP's BCD store, a user's hive -- is listed as comments only, never as a line regedit would
import. This module renders from the change models (``ce.changes``); the CLI decides where the file goes.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..changes import REGISTRY_CHANGES, Plan, RegistryDeleteKey, RegistryDeleteValue, Result
from ..changes.guest import data_from_json, shown, type_from_name
from ..errors import RegFileUnwritable
from .values import RegType, encode_value

HEADER = "Windows Registry Editor Version 5.00"
ROOTS = {"SYSTEM": r"HKEY_LOCAL_MACHINE\SYSTEM", "SOFTWARE": r"HKEY_LOCAL_MACHINE\SOFTWARE",
         "SAM": r"HKEY_LOCAL_MACHINE\SAM", "SECURITY": r"HKEY_LOCAL_MACHINE\SECURITY",
         "DEFAULT": r"HKEY_USERS\.DEFAULT"}
WRAP_AT = 77              # regedit breaks a hex line once it reaches this many characters (80 with ",\")
UNQUOTABLE = ("\r", "\n")  # a REG_SZ holding these cannot be a "..." line: it is written as hex(1)


# ---------------------------------------------------------------- collecting

def registry_changes(document: Plan | Result) -> list:
    """The registry changes a plan would make, or those a result applied; a sequence's parts in order."""
    if isinstance(document, Plan):
        found = [c for c in document.changes if isinstance(c, REGISTRY_CHANGES)]
    else:
        found = [o.change for o in document.outcomes
                 if o.status == "applied" and isinstance(o.change, REGISTRY_CHANGES)]
    for part in document.parts:
        found += registry_changes(part)
    return found


# ---------------------------------------------------------------- rendering

def render(document: Plan | Result) -> str:
    """The whole file as text (``\\n`` line ends; ``encode`` makes the bytes)."""
    changes = registry_changes(document)
    lines = [HEADER, "", *intro(document, len(changes)), ""]
    for group in key_groups(changes):
        lines += key_block(group)
    return "\n".join(lines) + "\n"


def encode(text: str) -> bytes:
    """UTF-16LE with a BOM and CRLF line ends, as regedit writes its exports."""
    return b"\xff\xfe" + text.replace("\n", "\r\n").encode("utf-16-le")


def intro(document: Plan | Result, count: int) -> list[str]:
    what = "planned by a dry run, not applied" if isinstance(document, Plan) else "applied by the run"
    if not count:
        return [f"; ce {document.step}: no registry changes ({what})."]
    return [f"; ce {document.step}: {count} registry change{'s' * (count != 1)}, {what}.",
            "; Each value's old data and the reason for the change are in the comment above it."]


def key_groups(changes: Iterable) -> Iterator[list]:
    """Runs of consecutive changes in the same key (the plan's order is kept: a key deleted, then set again)."""
    group: list = []
    for change in changes:
        if group and (isinstance(change, RegistryDeleteKey) or where(change) != where(group[0])
                      or isinstance(group[0], RegistryDeleteKey)):
            yield group
            group = []
        group.append(change)
    if group:
        yield group


def where(change) -> tuple:
    return change.filesystem, change.hive.upper(), change.key.lower()


def key_path(change) -> str | None:
    """The key as a running Windows names it, or None when its hive has no such name."""
    root = None if change.filesystem else ROOTS.get(change.hive.upper())
    return f"{root}\\{change.key}" if root else None


def key_block(group: list) -> list[str]:
    first = group[0]
    path = key_path(first)
    if isinstance(first, RegistryDeleteKey):
        body = [*comment(f"deletes the whole key and everything under it -- {first.reason or 'no reason given'}"),
                f"[-{path or offline_name(first)}]"]
    else:
        body = [f"[{path or offline_name(first)}]"]
        for change in group:
            body += value_lines(change)
    if path is None:
        return [*comment(offline_note(first)), *(f";   {line}" if line else ";" for line in body), ""]
    return [*body, ""]


def offline_name(change) -> str:
    return f"{change.filesystem}:{change.hive}\\{change.key}" if change.filesystem else f"{change.hive}\\{change.key}"


def offline_note(change) -> str:
    if change.filesystem:
        place = f"the hive file {change.hive} on {change.filesystem}, another filesystem of the disk than Windows' own"
    else:
        place = f"the hive {change.hive}, which is not one of the machine's hives"
    return (f"NOT RE-APPLIABLE: this change is in {place}; a running Windows has no registry path for it, so it is "
            f"listed as comments only (load that hive in regedit to make it by hand).")


def value_lines(change) -> list[str]:
    name = '@' if change.name == "" else quote(change.name)
    reason = f" -- {change.reason}" if change.reason else ""
    if isinstance(change, RegistryDeleteValue):
        return [*comment(f"deletes it; was {readable(change.old)}{reason}"), f"{name}=-"]
    was = "was absent" if change.old is None else f"was {readable(change.old)}"
    now = f"; now {readable(change.new)}" if change.new["type"] in (
        "REG_EXPAND_SZ", "REG_MULTI_SZ", "REG_LINK") else ""
    return [*comment(f"{was}{now}{reason}"), *value_data(f"{name}=", change.new["type"], change.new["value"])]


def readable(value: dict) -> str:
    return f"{value['type']} {shown(value['value'])}"


def comment(text: str) -> list[str]:
    """``;`` lines for ``text``; none ends in a backslash, which regedit would take for a line continued."""
    return [f"; {line}" + (" ;" if line.endswith("\\") else "") for line in text.splitlines() or [""]]


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def value_data(prefix: str, type_name: str, value) -> list[str]:
    """``"name"=<data>`` in regedit's syntax, wrapped as regedit wraps hex data."""
    rtype = reg_type_of(type_name)
    if rtype == RegType.SZ and not any(c in value for c in UNQUOTABLE):
        return [prefix + quote(value)]
    if rtype == RegType.DWORD:
        return [f"{prefix}dword:{value:08x}"]
    data = encode_value(rtype, data_from_json(rtype, value) if isinstance(rtype, RegType) else bytes.fromhex(value))
    return hex_lines(prefix + ("hex:" if rtype == RegType.BINARY else f"hex({int(rtype):x}):"), data)


def reg_type_of(type_name: str) -> RegType | int:
    """The type of a document's ``type`` name; an unknown number (``0x1f``) stays a number."""
    if type_name.startswith("0x"):
        return int(type_name, 16)
    return type_from_name(type_name)


def hex_lines(prefix: str, data: bytes) -> list[str]:
    """``prefix`` then the bytes as ``xx,xx,...``; a line ends in ``,\\`` once it reaches ``WRAP_AT`` characters
    (counted in UTF-16 units, as regedit counts) and the next one starts with two spaces."""
    lines, line, width = [], prefix, utf16_len(prefix)
    for i, byte in enumerate(data):
        line += f"{byte:02x}"
        if i == len(data) - 1:
            break
        line += ","
        width += 3
        if width >= WRAP_AT:
            lines.append(line + "\\")
            line, width = "  ", 2
    return [*lines, line]


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# ---------------------------------------------------------------- the file

def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a path the file could not be written to: a missing or unwritable directory, a
    directory itself, a file that may not be replaced. Returns the absolute path."""
    target = Path(path).absolute()
    if target.is_dir():
        raise RegFileUnwritable(f"{path} is a directory: give a file name for the .reg file")
    if target.exists() and not os.access(target, os.W_OK):
        raise RegFileUnwritable(f"{path} exists and may not be replaced")
    try:
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise RegFileUnwritable(f"cannot write {path}: {exc.strerror} ({target.parent})") from None
    return target


def write(path: str | os.PathLike, document: Plan | Result) -> None:
    """Write the document's registry changes to ``path``: a temporary file beside it, flushed, then renamed over
    it, so a reader never sees half a file."""
    target = Path(path).absolute()
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(encode(render(document)))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except OSError as exc:
        os.unlink(temporary)
        raise RegFileUnwritable(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        os.unlink(temporary)
        raise
