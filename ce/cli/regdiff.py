"""``--reg-diff FILE`` on ``ce plan`` / ``ce run`` and every step command: the plan's (dry run) or the result's
applied registry changes as a regedit file (``ce.registry.regfile``). The path is checked before the step runs, so
an unwritable one costs nothing; a step without registry changes writes a file that says so."""
from __future__ import annotations

import sys
from pathlib import Path


def add_argument(p) -> None:
    p.add_argument("--reg-diff", metavar="FILE", help="also write the registry changes (planned, or applied by a run) "
                   "as a regedit .reg file, with each value's old data and reason as comments")


def target(args) -> Path | None:
    """The checked path of ``--reg-diff``, or None without it; refuses an unwritable one (reg_file_unwritable)."""
    path = getattr(args, "reg_diff", None)
    if not path:
        return None
    from ..registry import regfile          # here, not at import: `ce --help` needs only add_argument
    return regfile.check_writable(path)


def write(path: Path | None, document, args) -> None:
    if path is None:
        return
    from ..registry import regfile
    regfile.write(path, document)
    if not getattr(args, "quiet", False):
        count = len(regfile.registry_changes(document))
        print(f"reg diff: {count} registry change{'s' * (count != 1)} written to {path}", file=sys.stderr)
