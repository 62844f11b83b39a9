r"""Remote paths on a share: always relative to a location's folder, with Windows' name rules.

``..``, absolute paths, drive letters, UNC prefixes, control characters, alternate data streams, wildcards and
reserved device names are refused (``SmbPathRefused``); what passes is returned as a backslash path.
"""
from __future__ import annotations

import re

from ..errors import SmbPathRefused

RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$",
                  *(f"{dev}{n}" for dev in ("COM", "LPT") for n in "123456789¹²³")}
FORBIDDEN_CHARS = set('<>"|?*')


def normalize_path(path: str) -> str:
    r"""``path`` relative to a location's folder, '/' or '\' separated, as a backslash path; refuses escapes."""
    if not isinstance(path, str) or not path:
        raise SmbPathRefused("refused an empty remote path: name a file or folder inside the location's folder")
    if path[:2] in ("\\\\", "//", "\\/", "/\\"):
        raise SmbPathRefused(f"refused remote path {path!r}: UNC paths are not allowed, give a path relative to "
                             "the location's folder")
    if path[0] in "\\/":
        raise SmbPathRefused(f"refused remote path {path!r}: absolute paths are not allowed, give a path relative "
                             "to the location's folder")
    if re.match(r"^[A-Za-z]:", path):
        raise SmbPathRefused(f"refused remote path {path!r}: drive letters are not allowed, give a path relative "
                             "to the location's folder")
    parts = re.split(r"[\\/]", path)
    for part in parts:
        check_component(part, path)
    return "\\".join(parts)


def check_component(part: str, path: str) -> None:
    """Refuse ``part``, one name of ``path``, unless Windows and the share would store it under that very name."""
    problem = component_problem(part)
    if problem:
        raise SmbPathRefused(f"refused remote path {path!r}: {problem}")


def component_problem(part: str) -> str | None:
    """Why ``part`` cannot be one name of a remote path, or None."""
    if part == "..":
        return "'..' is not allowed: paths must stay inside the location's folder"
    if part in ("", "."):
        return "empty and '.' components are not allowed"
    if any(ord(c) < 32 or ord(c) == 127 for c in part):
        return "control characters (NUL, newline, ...) are not allowed"
    if ":" in part:
        return "':' is not allowed (drive letters and alternate data streams)"
    if FORBIDDEN_CHARS & set(part):
        return "the characters < > \" | ? * are not allowed in Windows file names"
    if part[-1] in ". ":
        return "a name may not end with a dot or a space (Windows strips them)"
    if part.split(".")[0].rstrip(" ").upper() in RESERVED_NAMES:
        return f"{part!r} is a reserved Windows device name"
    if len(part) > 255:
        return "a name may have at most 255 characters"
    return None
